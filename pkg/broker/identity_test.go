package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
)

const (
	azClientAnnotation = "azure.workload.identity/client-id"
	azTenantAnnotation = "azure.workload.identity/tenant-id"
	clientGUID         = "5b7c1a2e-3f4d-4e6a-9b8c-0d1e2f3a4b5c"
)

var azureVault = Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: "https://vault.azure.net"}

// newAzureEnv is the test environment with AWS and Azure configured; the
// fake exchanger's Azure tokens name the client ID and tenant they were
// minted for.
func newAzureEnv(t *testing.T, mutate func(*Config)) *testEnv {
	e := newEnv(t, func(c *Config) {
		c.Clouds = append(c.Clouds, azureCloud(c.Clouds[0].Exchanger, azClientAnnotation, azTenantAnnotation, "tenant-default"))
		if mutate != nil {
			mutate(c)
		}
	})
	e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		return azureToken(e, req), nil
	})
	return e
}

func azureToken(e *testEnv, req exchange.Request) exchange.Credentials {
	return exchange.Credentials{Kind: exchange.KindAccessToken, TokenType: "Bearer", Expiration: e.clock.Now().Add(time.Hour),
		AccessToken: exchange.Secret(fmt.Sprintf("AZ-%s@%s-%d", req.Role, req.Tenant, e.exchanger.calls.Load()))}
}

// applyAnnotations creates or updates ns/name with exactly these
// annotations and waits until the broker's watch shows the field at each
// index of want.
func (e *testEnv) applyAnnotations(ns, name string, annotations map[string]string, want map[int]string) {
	e.t.Helper()
	ctx := context.Background()
	sas := e.client.CoreV1().ServiceAccounts(ns)
	sa, err := sas.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		sa = &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}
		_, err = sas.Create(ctx, sa, metav1.CreateOptions{})
	case err == nil:
		sa.Annotations = annotations
		_, err = sas.Update(ctx, sa, metav1.UpdateOptions{})
	}
	if err != nil {
		e.t.Fatal(err)
	}
	testfake.Eventually(e.t, "the watch to see "+ns+"/"+name, func() bool {
		for i, v := range want {
			if got, err := e.broker.accounts.Identity(ns, name, i); err != nil || got != v {
				return false
			}
		}
		return true
	})
}

// The cached token's identity is the (tenant, client ID) pair: a change of
// the tenant annotation takes effect on the next request (cache, failure
// memo and flight included) and on the next refresh, not 20 minutes later.
func TestAzureTenantChangeTakesEffectAtOnce(t *testing.T) {
	e := newAzureEnv(t, nil)
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-a"}, map[int]string{1: clientGUID, 2: "tenant-a"})
	p := e.pod("10.0.0.1", "ns", "p", "app")
	tokenFor := func(want string) {
		t.Helper()
		ans, _, err := e.gcp("10.0.0.1", azureVault)
		if err != nil {
			t.Fatalf("want a token of %s: %v", want, err)
		}
		if got := ans.Credentials.AccessToken.Reveal(); !strings.HasPrefix(got, "AZ-"+clientGUID+"@"+want+"-") {
			t.Fatalf("served %s, want a token of %s", got, want)
		}
	}
	tokenFor("tenant-a")
	tokenFor("tenant-a")
	if n := e.exchanger.calls.Load(); n != 1 {
		t.Fatalf("%d exchanges, want 1 and a cache hit", n)
	}

	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-b"}, map[int]string{2: "tenant-b"})
	tokenFor("tenant-b")
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID}, map[int]string{2: ""})
	tokenFor("tenant-default")

	// A refusal remembered for a wrong tenant does not outlive the fix.
	e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		if req.Tenant == "tenant-wrong" {
			return exchange.Credentials{}, &exchange.Error{Kind: exchange.Denied, Code: "AADSTS700016", Err: errors.New("application not found in the directory")}
		}
		return azureToken(e, req), nil
	})
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-wrong"}, map[int]string{2: "tenant-wrong"})
	if _, f, err := e.gcp("10.0.0.1", azureVault); err == nil || f.Class != Unavailable {
		t.Fatalf("the wrong tenant: %v %+v, want a provisional denial", err, f)
	}
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-c"}, map[int]string{2: "tenant-c"})
	tokenFor("tenant-c")

	// A request after the change does not join a fetch for the old tenant.
	entered, release := make(chan struct{}), make(chan struct{})
	e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		if req.Tenant == "tenant-slow" {
			close(entered)
			<-release
		}
		return azureToken(e, req), nil
	})
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-slow"}, map[int]string{2: "tenant-slow"})
	var wg sync.WaitGroup
	wg.Go(func() { _, _, _ = e.gcp("10.0.0.1", azureVault) })
	<-entered
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-d"}, map[int]string{2: "tenant-d"})
	tokenFor("tenant-d")
	close(release)
	wg.Wait()

	// The refresh of an entry not yet due fetches at once for a new tenant.
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, azTenantAnnotation: "tenant-e"}, map[int]string{2: "tenant-e"})
	key := entryKey{uid: p.UID, req: azureVault}
	if _, err := e.broker.sync(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if got, ok := e.broker.cache.Peek(key); !ok || !strings.Contains(got.creds.AccessToken.Reveal(), "@tenant-e-") {
		t.Fatal("the refresh after the tenant changed did not fetch for the new tenant")
	}
}

// Azure client IDs are GUIDs, which Entra ID compares without regard to
// letter case: so do the operator's patterns, the caller naming its client
// ID and the cache. Other identities (role ARNs, emails) stay exact.
func TestGUIDsIgnoreLetterCase(t *testing.T) {
	upper := strings.ToUpper(clientGUID)
	e := newAzureEnv(t, func(c *Config) {
		c.Clouds[0].AllowedIdentities = []string{"arn:aws:iam::111122223333:role/team-a/*"}
		c.Clouds[1].AllowedIdentities = []string{"5B7C1A2E-*"}
	})
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: clientGUID, roleAnnotation: roleA}, map[int]string{0: roleA, 1: clientGUID})
	e.applyAnnotations("ns", "shouty", map[string]string{roleAnnotation: strings.ToUpper(roleA)}, map[int]string{0: strings.ToUpper(roleA)})
	e.pod("10.0.0.1", "ns", "p", "app")
	e.pod("10.0.0.2", "ns", "q", "shouty")

	named := azureVault
	named.Identity = upper
	ans, f, err := e.gcp("10.0.0.1", named)
	if err != nil {
		t.Fatalf("naming its client ID in upper case: %v %+v", err, f)
	}
	if !strings.HasPrefix(ans.Credentials.AccessToken.Reveal(), "AZ-"+clientGUID+"@") {
		t.Errorf("exchanged for %s, want the client ID as annotated", ans.Credentials.AccessToken.Reveal())
	}
	named.Identity = "6b7c1a2e-3f4d-4e6a-9b8c-0d1e2f3a4b5c"
	if _, f, err := e.gcp("10.0.0.1", named); err == nil || f.Code != CodeIdentityNotAllowed {
		t.Errorf("naming another client ID: %v %+v, want IdentityNotAllowed", err, f)
	}
	// The annotation rewritten in upper case names the same application:
	// the cached token still serves.
	e.applyAnnotations("ns", "app", map[string]string{azClientAnnotation: upper, roleAnnotation: roleA}, map[int]string{1: upper})
	if _, _, err := e.gcp("10.0.0.1", azureVault); err != nil || e.exchanger.calls.Load() != 1 {
		t.Errorf("after the annotation changed case: %v, %d exchanges; want a cache hit", err, e.exchanger.calls.Load())
	}

	// A role ARN is no GUID: exact, as AWS compares it in a trust policy.
	aws := awsRequest
	aws.Identity = strings.ToUpper(roleA)
	if _, f, err := e.gcp("10.0.0.1", aws); err == nil || f.Code != CodeIdentityNotAllowed {
		t.Errorf("naming the role in another case: %v %+v, want IdentityNotAllowed", err, f)
	}
	if r := e.get("10.0.0.2"); r.errObj["code"] != CodeRoleNotAllowed {
		t.Errorf("a role matching the pattern only in another case: %d %s, want RoleNotAllowed", r.status, r.body)
	}
}

// The ServiceAccount watch keeps each annotation on its own: a value
// holding a NUL (the API server accepts any string) cannot spill into
// another cloud's field, and an identity holding a control character is
// refused before any upstream call.
func TestAnnotationWithControlCharactersNamesNoOtherIdentity(t *testing.T) {
	e := newTwoCloudEnv(t, nil)
	other := "other@proj.iam.gserviceaccount.com"
	e.applyAnnotations("ns", "a", map[string]string{roleAnnotation: roleA + "\x00" + other}, map[int]string{0: roleA + "\x00" + other})
	e.applyAnnotations("ns", "b", map[string]string{gcpAnnotation: emailA + "\n"}, nil)
	e.applyAnnotations("ns", "c", map[string]string{gcpAnnotation: "x\x00" + emailA}, map[int]string{1: "x\x00" + emailA})
	e.pod("10.0.0.1", "ns", "pa", "a")
	e.pod("10.0.0.2", "ns", "pb", "b")
	e.pod("10.0.0.3", "ns", "pc", "c")

	ans, _, err := e.gcp("10.0.0.1", gcpDefault)
	if err != nil || ans.Identity != "" || strings.Contains(ans.Credentials.AccessToken.Reveal(), other) {
		t.Fatalf("pod a (no Google annotation) got identity %q (%v), want its own federated principal", ans.Identity, err)
	}
	if r := e.get("10.0.0.1"); r.status != 403 || r.errObj["code"] != CodeInvalidRole || strings.ContainsAny(r.body, "\x00") {
		t.Errorf("a role annotation holding a NUL: %d %q, want refused InvalidRole without echoing it", r.status, r.body)
	}
	// A trailing newline is trimmed, as before; an inner NUL is refused.
	if ans, _, err := e.gcp("10.0.0.2", gcpDefault); err != nil || ans.Identity != emailA {
		t.Errorf("pod b: %q %v, want %s", ans.Identity, err, emailA)
	}
	if _, f, err := e.gcp("10.0.0.3", gcpDefault); err == nil || f.Code != CodeInvalidRole {
		t.Errorf("pod c: %v %+v, want refused InvalidRole", err, f)
	}
	if n := e.exchanger.calls.Load(); n != 2 {
		t.Errorf("%d exchanges, want 2 (pods a and b on GCP)", n)
	}
}
