package broker

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

const (
	gcpAnnotation = "iam.gke.io/gcp-service-account"
	gcpAudience   = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
	emailA        = "app-a@proj.iam.gserviceaccount.com"
	cloudPlatform = "https://www.googleapis.com/auth/cloud-platform"
)

var gcpDefault = Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: cloudPlatform}

// newTwoCloudEnv is the test environment with AWS and GCP configured, GCP
// serving federated principals and prefetching the default scopes.
func newTwoCloudEnv(t *testing.T, mutate func(*Config)) *testEnv {
	return newEnv(t, func(c *Config) {
		c.Clouds = append(c.Clouds, Cloud{Name: exchange.GCP, Exchanger: c.Clouds[0].Exchanger, Audience: gcpAudience,
			Annotation: gcpAnnotation, IdentityOptional: true, Prefetch: prefetchOf(gcpDefault)})
		if mutate != nil {
			mutate(c)
		}
	})
}

// annotated creates a ServiceAccount with these annotations and waits for
// the broker to see them.
func (e *testEnv) annotated(ns, name string, annotations map[string]string) {
	e.t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}
	if _, err := e.client.CoreV1().ServiceAccounts(ns).Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	testfake.Eventually(e.t, "the ServiceAccount watch to see "+ns+"/"+name, func() bool {
		id, err := e.broker.accounts.Identity(ns, name, 1)
		return err == nil && id == annotations[gcpAnnotation]
	})
}

func (e *testEnv) gcp(addr string, req Request) (Answer, Failure, error) {
	e.t.Helper()
	ans, err := e.broker.Credentials(context.Background(), netip.MustParseAddr(addr), req)
	if err != nil {
		return ans, Classify(err), err
	}
	return ans, Failure{}, nil
}

func TestGCPServesEachPodItsOwnIdentity(t *testing.T) {
	e := newTwoCloudEnv(t, nil)
	e.annotated("ns", "a", map[string]string{gcpAnnotation: emailA})
	e.annotated("ns", "b", nil) // no Google service account: its own federated principal
	e.pod("10.0.0.1", "ns", "pod-a", "a")
	e.pod("10.0.0.2", "ns", "pod-b", "b")

	a, _, err := e.gcp("10.0.0.1", gcpDefault)
	if err != nil {
		t.Fatal(err)
	}
	if a.Identity != emailA || !strings.Contains(a.Credentials.AccessToken.Reveal(), "ns.pod-a.") || !strings.Contains(a.Credentials.AccessToken.Reveal(), emailA) {
		t.Errorf("pod a got %s for identity %q, want its own token impersonating %s", a.Credentials.AccessToken.Reveal(), a.Identity, emailA)
	}
	b, _, err := e.gcp("10.0.0.2", gcpDefault)
	if err != nil {
		t.Fatal(err)
	}
	if b.Identity != "" || !strings.Contains(b.Credentials.AccessToken.Reveal(), "ns.pod-b.") || strings.Contains(b.Credentials.AccessToken.Reveal(), "@") {
		t.Errorf("pod b got %s for identity %q, want its own federated token", b.Credentials.AccessToken.Reveal(), b.Identity)
	}
	e.audiencesMu.Lock()
	defer e.audiencesMu.Unlock()
	if want := []string{gcpAudience, gcpAudience}; !slices.Equal(e.audiences, want) {
		t.Errorf("TokenRequest audiences %q, want the provider's for each GCP fetch", e.audiences)
	}
}

func TestGCPPolicy(t *testing.T) {
	e := newTwoCloudEnv(t, nil)
	e.annotated("ns", "a", map[string]string{gcpAnnotation: emailA})
	e.annotated("ns", "default", map[string]string{gcpAnnotation: emailA})
	e.pod("10.0.0.1", "ns", "pod-a", "a")
	e.pod("10.0.0.3", "ns", "pod-d", "default")

	if _, f, err := e.gcp("10.0.0.1", Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Identity: "other@proj.iam.gserviceaccount.com", Scope: cloudPlatform}); err == nil || f.Class != Refused || f.Code != CodeIdentityNotAllowed {
		t.Errorf("another Google service account: %v %+v, want refused IdentityNotAllowed", err, f)
	}
	if ans, _, err := e.gcp("10.0.0.1", Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Identity: emailA, Scope: cloudPlatform}); err != nil || ans.Identity != emailA {
		t.Errorf("naming its own account: %v", err)
	}
	if _, f, err := e.gcp("10.0.0.3", gcpDefault); err == nil || f.Code != CodeDefaultServiceAccount {
		t.Errorf("default ServiceAccount: %v %+v, want refused whatever it is annotated with", err, f)
	}
	if _, f, err := e.gcp("10.0.0.1", Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: "x"}); err == nil || f.Code != CodeCloudNotServed {
		t.Errorf("a cloud not configured: %v %+v", err, f)
	}
	// Asking with and without the account's name is one cache entry.
	if x := e.exchanger.calls.Load(); x != 1 {
		t.Errorf("%d exchanges, want 1 for two spellings of one request", x)
	}
}

func TestGCPConcurrentFirstRequestsShareOneFetch(t *testing.T) {
	e := newTwoCloudEnv(t, nil)
	e.annotated("ns", "a", map[string]string{gcpAnnotation: emailA})
	e.pod("10.0.0.1", "ns", "pod-a", "a")
	_, release := e.exchanger.hold()
	const callers = 30
	var wg sync.WaitGroup
	tokens := make([]string, callers)
	for i := range callers {
		wg.Go(func() {
			if a, _, err := e.gcp("10.0.0.1", gcpDefault); err == nil {
				tokens[i] = a.Credentials.AccessToken.Reveal()
			}
		})
	}
	testfake.Eventually(t, "all callers to miss the cache", func() bool { return e.counter("credbroker_cache_misses_total", nil) == callers })
	close(release)
	wg.Wait()
	for i, tok := range tokens {
		if tok == "" || tok != tokens[0] {
			t.Fatalf("caller %d got %q", i, tok)
		}
	}
	if tr, x := e.tokenReqs.Load(), e.exchanger.calls.Load(); tr != 1 || x != 1 {
		t.Errorf("TokenRequests %d, exchanges %d; want 1 and 1", tr, x)
	}
}

func TestGCPFreshnessAndOutage(t *testing.T) {
	e := newTwoCloudEnv(t, nil)
	e.annotated("ns", "a", map[string]string{gcpAnnotation: emailA})
	e.pod("10.0.0.1", "ns", "pod-a", "a")
	first, _, err := e.gcp("10.0.0.1", gcpDefault)
	if err != nil {
		t.Fatal(err)
	}
	// Inside the freshness floor a fresh token is fetched.
	e.clock.Step(time.Hour - FreshnessFloor + time.Second)
	second, _, err := e.gcp("10.0.0.1", gcpDefault)
	if err != nil || second.Credentials.AccessToken == first.Credentials.AccessToken {
		t.Fatalf("a token with less than %s left was served again (%v)", FreshnessFloor, err)
	}
	// Google down: the cached token, still valid, is served; a new pod
	// gets a retryable failure.
	e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Transient, Code: "503", Err: fmt.Errorf("unavailable")}
	})
	e.clock.Step(time.Hour - FreshnessFloor + time.Second)
	stale, _, err := e.gcp("10.0.0.1", gcpDefault)
	if err != nil || stale.Credentials.AccessToken != second.Credentials.AccessToken {
		t.Errorf("during the outage: %v, want the cached token", err)
	}
	e.annotated("ns", "c", nil)
	e.pod("10.0.0.4", "ns", "pod-c", "c")
	if _, f, err := e.gcp("10.0.0.4", gcpDefault); err == nil || f.Class != Unavailable || f.RetryAfter == 0 {
		t.Errorf("a new pod during the outage: %v %+v, want retryable", err, f)
	}
	// Past its expiry it is never served.
	e.clock.Step(FreshnessFloor)
	if _, f, err := e.gcp("10.0.0.1", gcpDefault); err == nil || f.Class != Unavailable {
		t.Errorf("an expired token: %v, want a retryable failure, never the token", err)
	}
}

// A pod asking for many scope sets evicts its own oldest entries, never
// another pod's.
func TestCacheIsBoundedPerPod(t *testing.T) {
	e := newTwoCloudEnv(t, func(c *Config) { c.PodCacheEntries = 4 })
	e.annotated("ns", "a", nil)
	e.annotated("ns", "b", nil)
	e.pod("10.0.0.1", "ns", "pod-a", "a")
	e.pod("10.0.0.2", "ns", "pod-b", "b")
	if _, _, err := e.gcp("10.0.0.2", gcpDefault); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		req := Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: fmt.Sprintf("https://example.com/scope-%02d", i)}
		// Past the per-pod fetch budget the hammering pod gets 429s; that
		// is the other bound, and it does not matter here.
		e.clock.Step(10 * time.Second)
		_, _, _ = e.gcp("10.0.0.1", req)
	}
	var mine, theirs int
	for _, k := range e.broker.cache.Keys() {
		switch k.uid {
		case "uid-ns-pod-a":
			mine++
		case "uid-ns-pod-b":
			theirs++
		}
	}
	if mine > 4 || theirs != 1 {
		t.Errorf("cached: %d for the hammering pod (want at most 4), %d for its neighbour (want 1)", mine, theirs)
	}
	if n := e.counter("credbroker_cache_evictions_total", map[string]string{"reason": evictPodLimit}); n == 0 {
		t.Error("no per-pod evictions counted")
	}
	if r := e.get("10.0.0.2"); r.status == http.StatusOK {
		// pod b has no role annotation: AWS refuses it; GCP still serves it.
		t.Errorf("pod b has no AWS role but got AWS credentials")
	}
}

func TestPrefetchCoversAnnotatedGoogleAccountsOnly(t *testing.T) {
	e := newTwoCloudEnv(t, nil)
	e.annotated("ns", "a", map[string]string{gcpAnnotation: emailA})
	e.annotated("ns", "b", nil)
	a := e.pod("10.0.0.1", "ns", "pod-a", "a")
	b := e.pod("10.0.0.2", "ns", "pod-b", "b")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.broker.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	e.broker.PodReady(a)
	e.broker.PodReady(b)
	testfake.Eventually(t, "the prefetch", e.broker.Prefetched)
	if !e.broker.cache.Contains(entryKey{uid: a.UID, req: gcpDefault}) {
		t.Error("the pod naming a Google service account was not prefetched")
	}
	if e.broker.cache.Contains(entryKey{uid: b.UID, req: gcpDefault}) {
		t.Error("a federated-only pod was prefetched: every pod would be")
	}
	if x := e.exchanger.calls.Load(); x != 1 {
		t.Errorf("%d exchanges, want 1 (pod a's GCP token; neither pod has an AWS role)", x)
	}
}

func TestTenantComesFromTheAnnotationOrTheDefault(t *testing.T) {
	const clientAnnotation, tenantAnnotation = "azure.workload.identity/client-id", "azure.workload.identity/tenant-id"
	e := newEnv(t, func(c *Config) {
		c.Clouds = append(c.Clouds, azureCloud(c.Clouds[0].Exchanger, clientAnnotation, tenantAnnotation, "tenant-default"))
	})
	for _, sa := range []*corev1.ServiceAccount{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "own", Annotations: map[string]string{clientAnnotation: "client-1", tenantAnnotation: "tenant-own"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain", Annotations: map[string]string{clientAnnotation: "client-2"}}},
	} {
		if _, err := e.client.CoreV1().ServiceAccounts("ns").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testfake.Eventually(t, "the watch", func() bool {
		id, err := e.broker.accounts.Identity("ns", "plain", 1)
		return err == nil && id == "client-2"
	})
	e.pod("10.0.0.1", "ns", "p1", "own")
	e.pod("10.0.0.2", "ns", "p2", "plain")
	var tenants []string
	var mu sync.Mutex
	e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		mu.Lock()
		tenants = append(tenants, req.Role+"@"+req.Tenant)
		mu.Unlock()
		return exchange.Credentials{Kind: exchange.KindAccessToken, AccessToken: "AZTOKEN", Expiration: e.clock.Now().Add(time.Hour)}, nil
	})
	azure := Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: "https://vault.azure.net"}
	for _, addr := range []string{"10.0.0.1", "10.0.0.2"} {
		if _, _, err := e.gcp(addr, azure); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"client-1@tenant-own", "client-2@tenant-default"}; !slices.Equal(tenants, want) {
		t.Errorf("exchanged %q, want %q", tenants, want)
	}
}

type recordedEvent struct{ kind, namespace, name, eventType, reason, message string }

type eventRecorder struct {
	mu     sync.Mutex
	events []recordedEvent
}

func (r *eventRecorder) Event(obj runtime.Object, eventType, reason, message string) {
	ref := obj.(*corev1.ObjectReference)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, recordedEvent{ref.Kind, ref.Namespace, ref.Name, eventType, reason, message})
}

// A refusal of an identified pod is an Event on that pod; a retryable
// failure and an unidentified caller are not.
func TestRefusalsRecordEventsOnThePod(t *testing.T) {
	rec := &eventRecorder{}
	e := newEnv(t, func(c *Config) { c.Events = rec })
	e.serviceAccount("ns", "plain", "")
	e.pod("10.0.0.1", "ns", "app-1", "plain")
	e.pod("10.0.0.2", "ns", "app-2", "default")
	e.resolver.Fail("10.0.0.3", podresolve.ErrNotFound)
	for _, addr := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		e.get(addr)
	}
	want := []recordedEvent{
		{"Pod", "ns", "app-1", corev1.EventTypeWarning, CodeNoRole, ""},
		{"Pod", "ns", "app-2", corev1.EventTypeWarning, CodeDefaultServiceAccount, ""},
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.events) != len(want) {
		t.Fatalf("events %+v, want %d", rec.events, len(want))
	}
	for i, w := range want {
		got := rec.events[i]
		if got.message == "" || strings.Contains(got.message, "SATOKEN") {
			t.Errorf("event %d message %q", i, got.message)
		}
		got.message = ""
		if got != w {
			t.Errorf("event %d = %+v, want %+v", i, got, w)
		}
	}
}

const audienceAnnotation = "credbroker.io/token-audiences"

func TestPodTokensForAllowedAudiences(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clouds = append(c.Clouds, podTokenCloud) })
	for name, audiences := range map[string]string{"caller": "https://svc.example.com/orders, https://svc.example.com/billing-*", "mute": ""} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: map[string]string{audienceAnnotation: audiences}}}
		if _, err := e.client.CoreV1().ServiceAccounts("ns").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Both: the map above creates them in either order.
	testfake.Eventually(t, "the watch", func() bool {
		_, errMute := e.broker.accounts.Identity("ns", "mute", 1)
		_, errCaller := e.broker.accounts.Identity("ns", "caller", 1)
		return errMute == nil && errCaller == nil
	})
	e.pod("10.0.0.1", "ns", "a", "caller")
	e.pod("10.0.0.2", "ns", "b", "mute")
	tokenFor := func(addr, aud string) (Answer, Failure, error) {
		return e.gcp(addr, Request{Cloud: "kubernetes", Want: exchange.KindIDToken, Scope: aud})
	}
	a, _, err := tokenFor("10.0.0.1", "https://svc.example.com/orders")
	if err != nil {
		t.Fatal(err)
	}
	if tok := a.Credentials.IDToken.Reveal(); !strings.HasPrefix(tok, "SATOKEN-uid-ns-a-") || !a.Credentials.Expiration.Equal(t0.Add(time.Hour)) {
		t.Errorf("token %q expiring %s, want pod a's own, living the session duration", tok, a.Credentials.Expiration)
	}
	if _, _, err := tokenFor("10.0.0.1", "https://svc.example.com/billing-eu"); err != nil {
		t.Errorf("an audience matching a glob: %v", err)
	}
	// A second request is a cache hit.
	if _, _, err := tokenFor("10.0.0.1", "https://svc.example.com/orders"); err != nil || e.tokenReqs.Load() != 2 {
		t.Errorf("TokenRequests %d after three answers for two audiences (%v)", e.tokenReqs.Load(), err)
	}
	for _, c := range []struct{ addr, aud, code string }{
		{"10.0.0.1", "https://svc.example.com/inventory", CodeAudienceNotAllowed},
		{"10.0.0.1", "sts.amazonaws.com", CodeAudienceNotAllowed},
		{"10.0.0.1", "https://evil.example.com/orders", CodeAudienceNotAllowed},
		{"10.0.0.1", "", CodeAudienceNotAllowed},
		{"10.0.0.2", "https://svc.example.com/orders", CodeNoRole},
	} {
		if _, f, err := tokenFor(c.addr, c.aud); err == nil || f.Class != Refused || f.Code != c.code {
			t.Errorf("%s asking for %q: %v %+v, want refused %s", c.addr, c.aud, err, f, c.code)
		}
	}
	e.audiencesMu.Lock()
	defer e.audiencesMu.Unlock()
	if want := []string{"https://svc.example.com/orders", "https://svc.example.com/billing-eu"}; !slices.Equal(e.audiences, want) {
		t.Errorf("TokenRequest audiences %q, want exactly the two allowed", e.audiences)
	}
}
