package broker

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/util/workqueue"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

const testNode = "node-a"

// realResolverEnv wires the broker to a real podresolve.Resolver (informer
// included) over the env's fake clientset, so that pod lifecycle events
// reach the broker exactly as they do in the agent.
type realResolverEnv struct {
	*testEnv
	resolver *podresolve.Resolver
}

func newRealResolverEnv(t *testing.T) *realResolverEnv {
	t.Helper()
	var r *podresolve.Resolver
	e := newEnv(t, func(c *Config) {
		var err error
		r, err = podresolve.New(podresolve.Config{
			Pods: kubetest.Pods(c.ServiceAccounts.(kubetest.ServiceAccountClient).Clientset()), NodeName: testNode, WaitForPod: -1,
			HostAddrs: func() ([]netip.Addr, error) { return nil, nil },
			// The env's fake clock also ends deletion grace periods.
			Clock: c.Clock.(*clocktesting.FakeClock),
		})
		if err != nil {
			t.Fatal(err)
		}
		c.Resolver = r
	})
	r.AddListener(e.broker)
	ctx, cancel := context.WithCancel(context.Background())
	resolverDone, brokerDone := make(chan error, 1), make(chan error, 1)
	go func() { resolverDone <- r.Run(ctx) }()
	go func() { brokerDone <- e.broker.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-resolverDone; <-brokerDone })
	testfake.Eventually(t, "the resolver to sync", r.HasSynced)
	return &realResolverEnv{testEnv: e, resolver: r}
}

func runningPod(name, sa string, created time.Time, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name),
			CreationTimestamp: metav1.NewTime(created)},
		Spec:   corev1.PodSpec{NodeName: testNode, ServiceAccountName: sa},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	} else {
		p.Status.Phase = corev1.PodPending
	}
	return p
}

func (e *realResolverEnv) apply(p *corev1.Pod) {
	e.t.Helper()
	pods := e.client.CoreV1().Pods(p.Namespace)
	if _, err := pods.Get(context.Background(), p.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		_, err = pods.Create(context.Background(), p, metav1.CreateOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if _, err := pods.Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// resolvesTo waits until addr resolves to the named pod (or, with name "",
// to nobody).
func (e *realResolverEnv) resolvesTo(addr, name string) {
	e.t.Helper()
	testfake.Eventually(e.t, addr+" to resolve to "+name, func() bool {
		p, err := e.resolver.Resolve(context.Background(), netip.MustParseAddr(addr))
		if name == "" {
			return errors.Is(err, podresolve.ErrNotFound)
		}
		return err == nil && p.Name == name
	})
}

// sessionOf returns the pod name a served credential was minted for: the
// fake exchanger puts the session name, "<ns>.<pod>.<hash>", in the key ID.
func sessionOf(r response) string {
	parts := strings.Split(strings.TrimPrefix(r.creds.AccessKeyID, "ASIA-"), ".")
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}

// Defect: a pod whose sandbox was recreated (same UID; IPs cleared, then
// the same or a new IP) was put in the departed set for good: every
// request fetched and threw the result away. Through the real resolver, it
// must cost one refetch at most and then be served from cache.
func TestSandboxRecreatedPodIsServedAgain(t *testing.T) {
	e := newRealResolverEnv(t)
	e.serviceAccount("ns", "sa", roleA)
	e.apply(runningPod("p", "sa", t0, "10.0.5.1"))
	e.resolvesTo("10.0.5.1", "p")
	testfake.Eventually(t, "the prefetch", e.broker.Prefetched)

	served := func(addr string) {
		t.Helper()
		for i := range 20 {
			if r := e.get(addr); r.status != http.StatusOK || sessionOf(r) != "p" {
				t.Fatalf("request %d from %s: %d %s", i, addr, r.status, r.body)
			}
		}
	}
	served("10.0.5.1")

	// The kubelet clears the pod's IPs while it recreates the sandbox.
	e.apply(runningPod("p", "sa", t0))
	e.resolvesTo("10.0.5.1", "")
	e.apply(runningPod("p", "sa", t0, "10.0.5.1"))
	e.resolvesTo("10.0.5.1", "p")
	testfake.Eventually(t, "the prefetch after the pod came back", func() bool { return e.cached("uid-p") })
	served("10.0.5.1")

	// A new address for the same pod is no reason to fetch again.
	e.apply(runningPod("p", "sa", t0, "10.0.5.2"))
	e.resolvesTo("10.0.5.2", "p")
	served("10.0.5.2")

	if tr, x := e.tokenReqs.Load(), e.exchanger.calls.Load(); tr != 2 || x != 2 {
		t.Fatalf("TokenRequests %d, exchanges %d for 60 requests over two sandboxes; want 2 and 2", tr, x)
	}
}

// Defect: two live pods swapping addresses, their statuses updated one at
// a time, left the older pod displaced for good (503 until recreated).
func TestPodsSwappingAddressesAreBothServed(t *testing.T) {
	e := newRealResolverEnv(t)
	e.serviceAccount("ns", "sa-p", roleA)
	e.serviceAccount("ns", "sa-q", roleB)
	e.apply(runningPod("p", "sa-p", t0, "10.0.6.1"))
	e.apply(runningPod("q", "sa-q", t0.Add(time.Minute), "10.0.6.2"))
	e.resolvesTo("10.0.6.1", "p")
	e.resolvesTo("10.0.6.2", "q")

	e.apply(runningPod("q", "sa-q", t0.Add(time.Minute), "10.0.6.1"))
	testfake.Eventually(t, "the address to be contested", func() bool {
		_, err := e.resolver.Resolve(context.Background(), netip.MustParseAddr("10.0.6.1"))
		return errors.Is(err, podresolve.ErrAmbiguous)
	})
	if r := e.get("10.0.6.1"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("contested address: %d %s, want 503", r.status, r.body)
	}
	e.apply(runningPod("p", "sa-p", t0, "10.0.6.2"))
	e.resolvesTo("10.0.6.1", "q")
	e.resolvesTo("10.0.6.2", "p")

	for addr, want := range map[string]struct{ pod, account string }{
		"10.0.6.1": {"q", "444455556666"}, "10.0.6.2": {"p", "111122223333"},
	} {
		r := e.get(addr)
		if r.status != http.StatusOK || sessionOf(r) != want.pod || r.creds.AccountID != want.account {
			t.Fatalf("%s after the swap: %d %s; want pod %s's credentials", addr, r.status, r.body, want.pod)
		}
	}
}

// Invariant 10: a TokenRequest answered NotFound for the pod means the pod
// is gone whatever the informer shows: its credential is evicted, nothing
// is fetched or served for it again, and a late PodReady does not bring it
// back.
func TestAPIServerSaysPodIsGone(t *testing.T) {
	e, p := newEnvWithPod(t, "10.0.7.1")
	if r := e.get("10.0.7.1"); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	// The refresh comes due, and the API server no longer knows the pod.
	e.clock.Step(50 * time.Minute)
	gone := error(apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"))
	e.tokenErr.Store(&gone)
	if retry, err := e.broker.sync(context.Background(), entryKey{uid: p.UID, req: awsRequest}); retry || !errors.Is(err, errPodGone) {
		t.Fatalf("refresh of a pod the API server does not know: retry=%v err=%v", retry, err)
	}
	calls := e.tokenReqs.Load()
	for range 5 {
		if r := e.get("10.0.7.1"); r.status != http.StatusServiceUnavailable || r.errObj["code"] != CodePodNotIdentified {
			t.Fatalf("a pod the API server says is gone was answered %d %s", r.status, r.body)
		}
	}
	e.broker.PodReady(p) // the informer, behind, announces it again
	if e.cached(p.UID) || e.tokenReqs.Load() != calls || e.exchanger.calls.Load() != 1 {
		t.Fatalf("a dead pod was fetched again: %d TokenRequests after, %d before", e.tokenReqs.Load(), calls)
	}
	if e.counter("credbroker_cache_evictions_total", map[string]string{"reason": evictPodDeleted}) != 1 {
		t.Error("pod_deleted eviction not counted")
	}
}

// Defect: AccessDenied (IAM is eventually consistent) and
// InvalidIdentityToken (STS could not fetch the issuer's keys) were final
// 403s at once. They are retried with backoff and answered 503 for
// deniedRetryWindow, then final.
func TestDenialIsRetriedThenFinal(t *testing.T) {
	for _, kind := range []exchange.ErrorKind{exchange.Denied, exchange.InvalidToken} {
		t.Run(kind.String(), func(t *testing.T) {
			e, _ := newEnvWithPod(t, "10.0.7.2")
			e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) {
				return exchange.Credentials{}, &exchange.Error{Kind: kind, Code: "AccessDenied", Err: errors.New("not yet")}
			})
			var statuses []int
			// Past the window by the longest backoff with its +20% jitter,
			// so the last provisional answer has expired.
			for e.clock.Since(t0) < deniedRetryWindow+maxDeniedBackoff*6/5+time.Second {
				r := e.get("10.0.7.2")
				if r.status == http.StatusServiceUnavailable && r.header.Get("Retry-After") == "" {
					t.Fatal("a provisional denial without Retry-After")
				}
				statuses = append(statuses, r.status)
				e.clock.Step(time.Second)
			}
			if statuses[0] != http.StatusServiceUnavailable || statuses[len(statuses)-1] != http.StatusForbidden {
				t.Fatalf("statuses from first to last: %d ... %d; want 503 ... 403", statuses[0], statuses[len(statuses)-1])
			}
			// Backoff: 2 s doubling to 30 s (+-20%) over 2.5 minutes is
			// about 8 calls; one a second would be 150.
			if n := e.exchanger.calls.Load(); n < 4 || n > 14 {
				t.Fatalf("%d exchanges over %d requests, want backoff (4..14)", n, len(statuses))
			}
			e.exchanger.setFn(nil) // the trust policy propagated
			e.clock.Step(negativeTTL)
			if r := e.get("10.0.7.2"); r.status != http.StatusOK {
				t.Fatalf("after the denial cleared: %d %s", r.status, r.body)
			}
		})
	}
}

// An authoritative denial ends stale serving of that role; a transient
// failure does not (TestOutageKeepsCachedPodsAndBacksOff).
func TestDenialEndsStaleServing(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.7.3")
	if r := e.get("10.0.7.3"); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	e.clock.Step(50 * time.Minute) // 10 minutes left: below the floor, still valid
	e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Denied, Code: "AccessDenied", Err: errors.New("trust policy")}
	})
	if r := e.get("10.0.7.3"); r.status == http.StatusOK {
		t.Fatal("a credential for a role STS now denies was served stale")
	}
	if e.cached("uid-ns-p") {
		t.Fatal("the denied role's credential is still cached")
	}
}

// Defect: with the API server unreachable for longer than the old role
// cache's 2*TTL, every cached credential was refused. The ServiceAccount
// watch keeps the last known annotation, and cached credentials are served
// while valid.
func TestAPIServerOutageKeepsServingCached(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.7.4")
	if r := e.get("10.0.7.4"); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	down := func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("down")
	}
	e.client.PrependReactor("*", "*", down)
	e.client.PrependWatchReactor("*", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, nil, apierrors.NewServiceUnavailable("down")
	})
	// 30 minutes of outage: 45 minutes of the credential left, fresh.
	for range 30 {
		e.clock.Step(time.Minute)
		if r := e.get("10.0.7.4"); r.status != http.StatusOK {
			t.Fatalf("%s into the outage the cached pod got %d %s", e.clock.Since(t0), r.status, r.body)
		}
	}
	e.pod("10.0.7.5", "ns", "new", "sa")
	if r := e.get("10.0.7.5"); r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("a new pod during the outage: %d %s, want 503 with Retry-After", r.status, r.body)
	}
}

// No request waits longer than RequestTimeout, however long the API
// server takes to answer.
func TestRequestWaitIsBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RequestTimeout = 50 * time.Millisecond })
	e.serviceAccount("ns", "sa", roleA)
	e.pod("10.0.7.6", "ns", "p", "sa")
	frozen := make(chan struct{})
	defer close(frozen)
	e.client.PrependReactor("create", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-frozen // accepted, never answered
		return true, nil, errors.New("unfrozen")
	})
	r := e.get("10.0.7.6")
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("request against a frozen API server: %d %s", r.status, r.body)
	}
}

// Defect: a ServiceAccount deleted and recreated (a GitOps replace) was
// cached as missing and answered 403, and a refresh in that window evicted
// the pod's credential.
func TestServiceAccountReplaced(t *testing.T) {
	e, p := newEnvWithPod(t, "10.0.7.7")
	first := e.get("10.0.7.7")
	if first.status != http.StatusOK {
		t.Fatal(first.body)
	}
	if err := e.client.CoreV1().ServiceAccounts("ns").Delete(context.Background(), "sa", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testfake.Eventually(t, "the watch to see the deletion", func() bool {
		_, err := e.broker.accounts.Identity("ns", "sa", 0)
		return errors.Is(err, errServiceAccountMissing)
	})
	if r := e.get("10.0.7.7"); r.status != http.StatusServiceUnavailable || r.errObj["code"] != CodeServiceAccountMissing {
		t.Fatalf("while the ServiceAccount is missing: %d %s, want a retryable 503", r.status, r.body)
	}
	if retry, _ := e.broker.sync(context.Background(), entryKey{uid: p.UID, req: awsRequest}); !retry || !e.cached(p.UID) {
		t.Fatalf("a refresh while the ServiceAccount is missing: retry=%v, cached=%v; want a retry and the credential kept",
			retry, e.cached(p.UID))
	}
	e.serviceAccount("ns", "sa", roleA)
	r := e.get("10.0.7.7")
	if r.status != http.StatusOK || r.creds.AccessKeyID != first.creds.AccessKeyID || e.exchanger.calls.Load() != 1 {
		t.Fatalf("after the ServiceAccount came back: %d, %d exchanges; want the cached credential", r.status, e.exchanger.calls.Load())
	}
}

// Defect: Prefetched could read true while a worker held a pod it had
// taken off the queue. It now tracks announced pods until their first
// fetch is over.
func TestPrefetchedWaitsForTheFetch(t *testing.T) {
	e, p := newEnvWithPod(t, "10.0.7.8")
	entered, release := e.exchanger.hold()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.broker.Run(ctx) }()
	defer func() { cancel(); <-done }()
	e.broker.PodReady(p)
	<-entered
	if e.broker.Prefetched() {
		t.Fatal("Prefetched while the pod's first fetch is running")
	}
	close(release)
	testfake.Eventually(t, "the prefetch to finish", e.broker.Prefetched)
	if !e.cached(p.UID) {
		t.Fatal("Prefetched before the credential was cached")
	}
}

// A pod's own requests cannot spend the node's upstream budget: a pod
// whose every request misses (its ServiceAccount's role flips) is limited
// on its own, and a neighbour is served.
func TestPodFetchBudget(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PodFetchBurst, c.PodFetchInterval = 3, time.Minute })
	e.serviceAccount("ns", "sa", roleA)
	e.serviceAccount("ns", "flip", roleA)
	e.pod("10.0.7.9", "ns", "noisy", "flip")
	e.pod("10.0.7.10", "ns", "quiet", "sa")
	limited := 0
	for i := range 10 {
		e.setRole("ns", "flip", []string{roleA, roleB}[i%2])
		if r := e.get("10.0.7.9"); r.status == http.StatusTooManyRequests {
			limited++
		}
	}
	// Requests 0-2 fetch; from then on the cache holds role A, so the
	// requests for role B (3, 5, 7, 9) are refused and those for A hit.
	if limited != 4 || e.exchanger.calls.Load() != 3 {
		t.Fatalf("%d of 10 refused, %d exchanges; want 4 refused and 3 exchanges", limited, e.exchanger.calls.Load())
	}
	if r := e.get("10.0.7.10"); r.status != http.StatusOK {
		t.Fatalf("the neighbour: %d %s", r.status, r.body)
	}
	if e.counter("credbroker_pod_fetch_limited_total", nil) != 4 {
		t.Error("limited fetches not counted")
	}
}

// Backoff and the refresh queue's delays are spread, so that pods failing
// together do not retry together.
func TestBackoffHasJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		d := backoff(3, time.Second, time.Minute)
		if d < 3200*time.Millisecond || d > 4800*time.Millisecond {
			t.Fatalf("backoff after 3 failures = %s, want 4s +-20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("50 backoffs took only %d values", len(seen))
	}
	q := jittered[string]{workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, time.Minute)}
	delays := map[time.Duration]bool{}
	for i := range 20 {
		key := string(rune('a' + i))
		delays[q.When(key)] = true
	}
	if len(delays) < 5 {
		t.Fatalf("20 first retries of different pods took only %d distinct delays", len(delays))
	}
}

// A TokenRequest forbidden (a restarting API server whose RBAC cache has
// not synced answers 403 for a moment; so does an admission denial) is
// retried for deniedRetryWindow, answered 503, and only then final.
func TestTokenRequestForbiddenIsRetriedThenFinal(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.7.11")
	forbidden := error(apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts/token"}, "sa", errors.New("RBAC: not yet")))
	e.tokenErr.Store(&forbidden)
	if r := e.get("10.0.7.11"); r.status != http.StatusServiceUnavailable || r.errObj["code"] != CodeTokenRequestRefused || r.header.Get("Retry-After") == "" {
		t.Fatalf("first forbidden TokenRequest: %d %s, want a retryable 503", r.status, r.body)
	}
	var last response
	for e.clock.Since(t0) < deniedRetryWindow+maxDeniedBackoff*6/5+time.Second {
		e.clock.Step(time.Second)
		last = e.get("10.0.7.11")
	}
	if last.status != http.StatusForbidden || last.errObj["code"] != CodeTokenRequestRefused {
		t.Fatalf("after the window: %d %s, want a final 403", last.status, last.body)
	}
	if n := e.tokenReqs.Load(); n > 14 {
		t.Fatalf("%d TokenRequests in the window, want backoff", n)
	}
}

// graphLagRefusal is the node authorizer's answer to a node's TokenRequest
// for a pod its graph does not yet place on that node.
var graphLagRefusal = error(apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts/token"}, "sa",
	errors.New(`User "system:node:node-1" cannot create resource "serviceaccounts/token" in API group "" in the namespace "ns": no relationship found between node 'node-1' and this object`)))

// lagGraph makes the next n TokenRequests meet graphLagRefusal, and counts
// them in refused.
func (e *testEnv) lagGraph(n int64, refused *atomic.Int64) {
	var left atomic.Int64
	left.Store(n)
	e.client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" || left.Add(-1) < 0 {
			return false, nil, nil
		}
		refused.Add(1)
		return true, nil, graphLagRefusal
	})
}

// getWhileWaiting asks for the pod's credentials while stepping the clock
// through waits, each once the broker has started waiting on it.
func (e *testEnv) getWhileWaiting(addr string, waits []time.Duration) response {
	e.t.Helper()
	idle := e.clock.Waiters()
	done := make(chan response, 1)
	go func() { done <- e.get(addr) }()
	for _, d := range waits {
		testfake.Eventually(e.t, "the broker to wait before asking the API server again", func() bool { return e.clock.Waiters() > idle })
		e.clock.Step(d)
	}
	return <-done
}

// A new pod can be missing from the node authorizer's graph for a moment
// after the agent's watch shows it (a hostNetwork pod calls at once). The
// TokenRequest is asked again after short waits, inside the one request,
// rather than failing the pod's first call.
func TestTokenRequestWaitsForTheNodeAuthorizerGraph(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.7.12")
	var refused atomic.Int64
	e.lagGraph(3, &refused)
	r := e.getWhileWaiting("10.0.7.12", graphLagWaits[:3])
	if r.status != http.StatusOK {
		t.Fatalf("after 3 refusals while the graph lagged: %d %s, want 200", r.status, r.body)
	}
	if n, ok := refused.Load(), e.tokenReqs.Load(); n != 3 || ok != 1 {
		t.Fatalf("TokenRequests: %d refused, %d admitted; want 3 and 1", n, ok)
	}
}

// A graph that never links the pod ends in a retryable refusal after every
// wait, saying why, as any other 403 does.
func TestTokenRequestGraphNeverCatchesUp(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.7.13")
	var refused atomic.Int64
	e.lagGraph(100, &refused)
	r := e.getWhileWaiting("10.0.7.13", graphLagWaits)
	if r.status != http.StatusServiceUnavailable || r.errObj["code"] != CodeTokenRequestRefused || !strings.Contains(r.errObj["message"], "does not link this pod to the agent's node") {
		t.Fatalf("graph never catching up: %d %s, want a retryable 503 naming the cause", r.status, r.body)
	}
	if n := refused.Load(); n != int64(len(graphLagWaits))+1 {
		t.Fatalf("%d TokenRequests, want %d", n, len(graphLagWaits)+1)
	}
}
