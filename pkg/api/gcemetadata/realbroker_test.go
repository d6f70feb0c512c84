package gcemetadata

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"cloud.google.com/go/compute/metadata"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/gcp"
	"github.com/credbroker/agent/pkg/podresolve"
)

// The tests in this file run the surface over the real broker (policy,
// cache, classification), with a fake Kubernetes API and a fake GCP
// exchanger, and read it with the real Go client.

const gcpAnnotation = "iam.gke.io/gcp-service-account"

// gcpExchanger behaves like pkg/exchange/gcp at its interface: access
// tokens naming the role and scopes, identity tokens only for a role.
type gcpExchanger struct {
	mu   sync.Mutex
	reqs []exchange.Request
}

func (x *gcpExchanger) Exchange(_ context.Context, req exchange.Request) (exchange.Credentials, error) {
	x.mu.Lock()
	req.Token = "" // never kept
	x.reqs = append(x.reqs, req)
	x.mu.Unlock()
	exp := time.Now().Add(time.Hour)
	switch req.Want {
	case exchange.KindAccessToken:
		return exchange.Credentials{Kind: exchange.KindAccessToken, TokenType: "Bearer", Expiration: exp,
			AccessToken: exchange.Secret(fmt.Sprintf("ya29.%s|%s", req.Role, strings.Join(req.Scopes, "+")))}, nil
	case exchange.KindIDToken:
		if req.Role == "" {
			return exchange.Credentials{}, &exchange.Error{Kind: exchange.InvalidRequest, Code: "no_service_account",
				Err: errors.New("identity tokens need a service account")}
		}
		return exchange.Credentials{Kind: exchange.KindIDToken, Expiration: exp, IDToken: exchange.Secret(fakeJWT(req.Audience, exp))}, nil
	}
	return exchange.Credentials{}, &exchange.Error{Kind: exchange.InvalidRequest, Err: errors.New("kind")}
}

func TestRealBroker(t *testing.T) {
	client := fake.NewClientset()
	kubetest.IssueTokens(client, 10*time.Minute, func(*authenticationv1.TokenRequest) string { return "SATOKEN" })
	for name, email := range map[string]string{"app": testEmail, "fed": "", "default": ""} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
		if email != "" {
			sa.Annotations = map[string]string{gcpAnnotation: email}
		}
		if _, err := client.CoreV1().ServiceAccounts("ns").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	res := &testfake.Resolver{}
	x := &gcpExchanger{}
	prefetch, err := TokenRequest([]string{DefaultScope})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{
		ServiceAccounts: kubetest.ServiceAccounts(client), Resolver: res,
		Clouds: []broker.Cloud{gcp.Profile(gcp.ProfileConfig{Exchanger: x, Provider: "projects/1/locations/global/workloadIdentityPools/p/providers/k",
			Annotation: gcpAnnotation, Prefetch: []exchange.Prefetch{{Want: prefetch.Want, Scope: prefetch.Scope}}})},
	})
	if err != nil {
		t.Fatal(err)
	}
	kubetest.RunSynced(t, b)

	h, err := New(Config{Broker: b, ProjectID: testProject, NumericProjectID: testNumber})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	c := metadataClient(ts)
	cctx := ctxT(t)
	pod := func(sa string) {
		res.Set(loopback.String(), podresolve.Pod{Namespace: "ns", Name: sa + "-0", UID: types.UID("uid-ns-" + sa), ServiceAccount: sa, IPs: []netip.Addr{loopback}})
	}

	t.Run("annotated", func(t *testing.T) {
		pod("app")
		if got, err := c.EmailWithContext(cctx, "default"); err != nil || got != testEmail {
			t.Errorf("email %q, %v", got, err)
		}
		tok, err := c.GetWithContext(cctx, "instance/service-accounts/"+testEmail+"/token?scopes=s2,s1")
		if err != nil || !strings.Contains(tok, `"access_token":"ya29.`+testEmail+`|s1+s2"`) {
			t.Errorf("token %q, %v", tok, err)
		}
		id, err := c.GetWithContext(cctx, "instance/service-accounts/default/identity?audience=https://svc.example&format=full")
		if err != nil || !strings.HasPrefix(id, "eyJ") {
			t.Errorf("identity %q, %v", id, err)
		}
	})
	t.Run("federated", func(t *testing.T) {
		pod("fed")
		if got, err := c.EmailWithContext(cctx, "default"); err != nil || got != testProject+FederatedSuffix {
			t.Errorf("email %q, %v", got, err)
		}
		for _, p := range []string{"default", testProject + FederatedSuffix} {
			tok, err := c.GetWithContext(cctx, "instance/service-accounts/"+p+"/token")
			if err != nil || !strings.Contains(tok, `"access_token":"ya29.|`+DefaultScope+`"`) {
				t.Errorf("%s token %q, %v", p, tok, err)
			}
		}
		if _, err := c.GetWithContext(cctx, "instance/service-accounts/default/identity?audience=a"); !isStatus(err, 404) && !isNotDefined(err) {
			t.Errorf("federated identity token: %v, want 404", err)
		}
		if _, err := c.EmailWithContext(cctx, testEmail); !isNotDefined(err) {
			t.Errorf("the other pod's email: %v, want not defined", err)
		}
	})
	t.Run("default ServiceAccount", func(t *testing.T) {
		pod("default")
		for _, p := range []string{"instance/service-accounts/default/token", "instance/service-accounts/default/email", "instance/service-accounts/"} {
			_, err := c.GetWithContext(cctx, p)
			var me *metadata.Error
			if !errors.As(err, &me) || me.Code != 403 || !strings.Contains(me.Message, broker.CodeDefaultServiceAccount) {
				t.Errorf("%s: %v, want 403 %s", p, err, broker.CodeDefaultServiceAccount)
			}
		}
	})

	// The exchanger saw the pod's own identity and the canonical scopes; the
	// federated principal's identity token never reached it.
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range x.reqs {
		if r.Want == exchange.KindIDToken && r.Role == "" {
			t.Errorf("a federated identity token reached the exchanger: %+v", r)
		}
		if r.Want == exchange.KindAccessToken && r.Role == testEmail && !(strings.Join(r.Scopes, " ") == "s1 s2" || strings.Join(r.Scopes, " ") == DefaultScope) {
			t.Errorf("scopes %q", r.Scopes)
		}
	}
}

func isNotDefined(err error) bool {
	var nd metadata.NotDefinedError
	return errors.As(err, &nd)
}
