package broker

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
)

// fetchLog classifies every upstream fetch of one pod as the test sees it
// happen: driven by the test's own request, a background refresh of a key
// still cached, a background fetch of one of the cloud's prefetch requests
// (refetched even when evicted: the pod's first request for it is to be a
// hit), or a background fetch of another key that is not cached (an
// evicted entry brought back: the defect).
type fetchLog struct {
	e          *testEnv
	uid        types.UID
	requesting atomic.Bool
	request    atomic.Int64
	cached     atomic.Int64
	prefetch   atomic.Int64
	evicted    atomic.Int64
}

// observe is called from the fakes for each fetch of req.
func (f *fetchLog) observe(req Request) {
	switch {
	case f.requesting.Load():
		f.request.Add(1)
	case f.e.broker.cache.Contains(entryKey{uid: f.uid, req: req}):
		f.cached.Add(1)
	case req == gcpDefault:
		f.prefetch.Add(1)
	default:
		f.evicted.Add(1)
	}
}

func (f *fetchLog) background() int64 { return f.cached.Load() + f.prefetch.Load() + f.evicted.Load() }

func (f *fetchLog) reset() {
	for _, n := range []*atomic.Int64{&f.request, &f.cached, &f.prefetch, &f.evicted} {
		n.Store(0)
	}
}

// ask makes one request as the pod, once every background worker is idle,
// so that what it fetches is counted as request-driven.
func (f *fetchLog) ask(addr string, req Request) (Failure, error) {
	synctest.Wait()
	f.requesting.Store(true)
	defer f.requesting.Store(false)
	_, fail, err := f.e.gcp(addr, req)
	return fail, err
}

// runInBubble starts Run for the rest of the test; the test must be in a
// synctest bubble, where synctest.Wait returns once every worker is idle.
func (e *testEnv) runInBubble(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.broker.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testfake.Eventually(t, "Run to start", e.broker.HasSynced)
}

// pass lets d go by, on the broker's fake clock and on the bubble's own
// (which the node-wide upstream limiter and timeouts run on), and lets the
// workers finish whatever came due.
func (e *testEnv) pass(d time.Duration) {
	e.clock.Step(d)
	time.Sleep(d)
	synctest.Wait()
}

// advance lets d go by a minute at a time.
func (e *testEnv) advance(d time.Duration) {
	for ; d > 0; d -= time.Minute {
		e.pass(min(d, time.Minute))
	}
}

func gcpScope(i int) Request {
	return Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: fmt.Sprintf("https://example.com/scope-%04d", i)}
}

// The measurement: PodCacheEntries=2, a pod asks for 8 scope sets
// once each. Before the fix, the evicted six came back in the background
// (8, 16, 30 background exchanges in three refresh rounds, each fetch
// evicting another entry whose refresh was queued too); now only the two
// entries still cached are refreshed.
func TestEvictedEntriesAreNotRefreshed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newTwoCloudEnv(t, func(c *Config) { c.PodCacheEntries = 2 })
		e.annotated("ns", "a", nil) // its own federated principal: nothing prefetched
		p := e.pod("10.0.0.1", "ns", "pod-a", "a")
		log := &fetchLog{e: e, uid: p.UID}
		e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
			log.observe(Request{Cloud: exchange.GCP, Want: req.Want, Scope: strings.Join(req.Scopes, " ")})
			return e.exchanger.mint(req, 0, time.Hour), nil
		})
		e.runInBubble(t)
		e.broker.PodReady(p)
		for i := range 8 {
			if _, err := log.ask("10.0.0.1", gcpScope(i)); err != nil {
				t.Fatal(err)
			}
		}
		var rounds []int64
		for range 3 {
			before := log.background()
			// A refresh is due 18 to 27 minutes after a fetch.
			e.advance(30 * time.Minute)
			rounds = append(rounds, log.background()-before)
		}
		t.Logf("background exchanges in three 30-minute rounds: %v (cached ones %d, evicted ones %d)", rounds, log.cached.Load(), log.evicted.Load())
		if n := log.evicted.Load(); n != 0 {
			t.Errorf("%d background exchanges for entries no longer cached, want 0", n)
		}
		for i, n := range rounds {
			// Two cached entries, each refreshed once or twice in 30 minutes.
			if n > 4 {
				t.Errorf("round %d: %d background exchanges, want at most 4 (the 2 cached entries)", i+1, n)
			}
		}
		if n := e.broker.cache.Len(); n != 2 {
			t.Errorf("%d entries cached, want the pod's 2", n)
		}
	})
}

// A pod asking for 1,000 distinct audiences over an hour (one every 3.6 s)
// costs at most its request-driven fetch budget (10 at once, then one per
// 6 s: 610 fetches, each one TokenRequest and for GCP one exchange), and
// nothing in the background for what was evicted: each entry is pushed
// out of the pod's 16 long before its refresh is due. Afterwards only the
// 16 entries still cached are refreshed, and nothing once the pod is gone.
func TestManyAudiencesCostOnlyThePodsFetchBudget(t *testing.T) {
	for _, c := range []struct {
		name    string
		cloud   func(*Config)
		sa      map[string]string
		request func(i int) Request
	}{
		{"GCP scope sets", func(c *Config) {
			c.Clouds = append(c.Clouds, Cloud{Name: exchange.GCP, Exchanger: c.Clouds[0].Exchanger, Audience: gcpAudience,
				Annotation: gcpAnnotation, IdentityOptional: true, Prefetch: prefetchOf(gcpDefault)})
		}, map[string]string{gcpAnnotation: emailA}, gcpScope},
		{"pod-token audiences", func(c *Config) { c.Clouds = append(c.Clouds, podTokenCloud) },
			map[string]string{audienceAnnotation: "https://svc.example.com/*"},
			func(i int) Request {
				return Request{Cloud: podTokenCloud.Name, Want: exchange.KindIDToken, Scope: fmt.Sprintf("https://svc.example.com/%04d", i)}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, c.cloud)
				sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", Annotations: c.sa}}
				if _, err := e.client.CoreV1().ServiceAccounts("ns").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				testfake.Eventually(t, "the watch", func() bool { id, err := e.broker.accounts.Identity("ns", "a", 1); return err == nil && id != "" })
				p := e.pod("10.0.0.1", "ns", "pod-a", "a")
				log := &fetchLog{e: e, uid: p.UID}
				e.client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
					if a.GetSubresource() != "token" {
						return false, nil, nil
					}
					// GCP fetches are classified by their exchange, which
					// names the scopes.
					if aud := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest).Spec.Audiences[0]; aud != gcpAudience {
						log.observe(Request{Cloud: podTokenCloud.Name, Want: exchange.KindIDToken, Scope: aud})
					}
					return false, nil, nil
				})
				e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
					log.observe(Request{Cloud: exchange.GCP, Want: req.Want, Scope: strings.Join(req.Scopes, " ")})
					return e.exchanger.mint(req, 0, time.Hour), nil
				})
				e.runInBubble(t)
				e.broker.PodReady(p)
				synctest.Wait()
				prefetched := e.tokenReqs.Load() // GCP: the annotated account's default scopes
				log.reset()

				throttled := 0
				for i := range 1000 {
					e.pass(3600 * time.Millisecond)
					f, err := log.ask("10.0.0.1", c.request(i))
					switch {
					case err == nil:
					case f.Class == Throttled:
						throttled++
					default:
						t.Fatalf("request %d: %v", i, err)
					}
				}
				synctest.Wait()
				fetches := e.tokenReqs.Load() - prefetched
				budget := int64(10 + time.Hour/(6*time.Second))
				t.Logf("an hour of 1,000 audiences: %d fetches (%d by requests, %d background: %d refreshes of cached entries, %d of the prefetched default, %d of evicted entries), %d requests answered 429",
					fetches, log.request.Load(), log.background(), log.cached.Load(), log.prefetch.Load(), log.evicted.Load(), throttled)
				if n := log.request.Load(); n > budget || throttled != 1000-int(n) {
					t.Errorf("%d fetches by requests and %d answered 429; want at most the budget of %d, the rest 429", n, throttled, budget)
				}
				if fetches != log.request.Load()+log.background() {
					t.Errorf("%d TokenRequests, but %d fetches classified", fetches, log.request.Load()+log.background())
				}
				if n := log.evicted.Load() + log.cached.Load(); n != 0 {
					t.Errorf("%d background fetches of the pod's audiences during the hour, want 0: every entry was evicted before its refresh was due", n)
				}
				// The prefetched default scopes, evicted by the flood, are
				// refetched once per refresh span (18 to 27 minutes).
				if n := log.prefetch.Load(); n > 4 {
					t.Errorf("%d background fetches of the prefetched request in an hour, want at most 4", n)
				}

				// The pod stops asking: what it still holds is refreshed,
				// nothing else.
				e.advance(2 * time.Hour)
				if n := log.evicted.Load(); n != 0 {
					t.Errorf("%d background fetches of evicted entries, want 0", n)
				}
				if n := log.cached.Load(); n == 0 || n > 16*7 {
					t.Errorf("%d background refreshes in two hours, want those of the 16 cached entries (every 18 to 27 minutes)", n)
				}
				e.broker.PodGone(p)
				before := e.tokenReqs.Load()
				e.advance(time.Hour)
				if n := e.tokenReqs.Load() - before; n != 0 {
					t.Errorf("%d fetches after the pod left, want 0", n)
				}
			})
		})
	}
}
