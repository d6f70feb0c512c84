package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

const (
	roleA = "arn:aws:iam::111122223333:role/team-a/reader"
	roleB = "arn:aws:iam::444455556666:role/writer"
)

func TestServesThePodBoundExchange(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("shop", "cart", roleA)
	e.pod("10.0.0.5", "shop", "cart-1", "cart")

	r := e.get("10.0.0.5")
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if r.creds.AccessKeyID == "" || r.creds.SecretAccessKey == "" || r.creds.Token == "" || r.creds.AccountID != "111122223333" {
		t.Errorf("credentials %+v incomplete, or without the role's account", r.creds)
	}
	if exp := mustParse(t, r.creds.Expiration); !exp.Equal(t0.Add(time.Hour)) {
		t.Errorf("Expiration %s, want %s", exp, t0.Add(time.Hour))
	}
	if got := e.exchanger.tokens; len(got) != 1 || !strings.HasPrefix(got[0], "SATOKEN-uid-shop-cart-1-") {
		t.Errorf("exchange got tokens %q, want the pod-bound token", got)
	}
}

func TestEachPodGetsOnlyItsOwnRole(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("ns", "a", roleA)
	e.serviceAccount("ns", "b", roleB)
	e.pod("10.0.0.1", "ns", "pod-a", "a")
	e.pod("10.0.0.2", "ns", "pod-b", "b")
	roles := map[string]string{}
	e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		c := e.exchanger.mint(req, 0, time.Hour)
		roles[c.AccessKeyID] = req.Role
		return c, nil
	})
	for range 3 {
		a, b := e.get("10.0.0.1"), e.get("10.0.0.2")
		if roles[a.creds.AccessKeyId()] != roleA || roles[b.creds.AccessKeyId()] != roleB {
			t.Fatalf("pod-a got %s, pod-b got %s", roles[a.creds.AccessKeyId()], roles[b.creds.AccessKeyId()])
		}
		if a.creds.AccountID != "111122223333" || b.creds.AccountID != "444455556666" {
			t.Fatalf("account ids %s %s", a.creds.AccountID, b.creds.AccountID)
		}
	}
	if n := e.exchanger.calls.Load(); n != 2 {
		t.Errorf("exchanges = %d, want 2 (one per pod, then cache hits)", n)
	}
}

// An IP that passes from a deleted pod to a new one must serve the new
// pod's identity, and never the old pod's cached credentials.
func TestIPReuseNeverServesThePreviousPod(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("ns", "old", roleA)
	e.serviceAccount("ns", "new", roleB)
	old := e.pod("10.0.0.9", "ns", "old-pod", "old")
	first := e.get("10.0.0.9")
	if first.status != http.StatusOK {
		t.Fatal(first.body)
	}
	e.broker.PodGone(old)
	e.pod("10.0.0.9", "ns", "new-pod", "new")
	second := e.get("10.0.0.9")
	if second.status != http.StatusOK {
		t.Fatal(second.body)
	}
	if second.creds.AccessKeyId() == first.creds.AccessKeyId() || second.creds.AccountID != "444455556666" {
		t.Fatalf("new pod got %+v, the old pod had %+v", second.creds, first.creds)
	}
	if e.cached(old.UID) {
		t.Error("the departed pod's credentials are still cached")
	}
	if e.counter("credbroker_cache_evictions_total", map[string]string{"reason": evictPodGone}) != 1 {
		t.Error("pod_gone eviction not counted")
	}
}

// A fetch that completes after its pod left must not put credentials back.
func TestFetchFinishingAfterPodLeftIsDiscarded(t *testing.T) {
	e, p := newEnvWithPod(t, "10.0.0.3")
	entered, release := e.exchanger.hold()
	done := make(chan response)
	go func() { done <- e.get("10.0.0.3") }()
	<-entered
	e.broker.PodGone(p)
	close(release)
	<-done
	if e.cached(p.UID) {
		t.Fatal("credentials of a departed pod were cached by a late fetch")
	}
}

func TestResolverOutcomes(t *testing.T) {
	cases := []struct {
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{podresolve.ErrHostAddress, http.StatusForbidden, CodeHostNetwork, false},
		{podresolve.ErrNotFound, http.StatusServiceUnavailable, CodePodNotIdentified, true},
		{podresolve.ErrAmbiguous, http.StatusServiceUnavailable, CodePodNotIdentified, true},
		{podresolve.ErrNotSynced, http.StatusServiceUnavailable, CodeUnavailable, true},
		{fmt.Errorf("wrapped: %w", podresolve.ErrHostAddress), http.StatusForbidden, CodeHostNetwork, false},
	}
	for _, c := range cases {
		t.Run(c.err.Error(), func(t *testing.T) {
			e := newEnv(t, nil)
			e.resolver.Fail("192.168.1.10", c.err)
			r := e.get("192.168.1.10")
			if r.status != c.status || r.errObj["code"] != c.code || r.errObj["Code"] != c.code {
				t.Fatalf("got %d %v, want %d %s", r.status, r.errObj, c.status, c.code)
			}
			if r.errObj["message"] == "" || r.errObj["message"] != r.errObj["Message"] {
				t.Errorf("message pair missing or different: %v", r.errObj)
			}
			if (r.header.Get("Retry-After") != "") != c.retryAfter {
				t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
			}
			if e.tokenReqs.Load() != 0 || e.exchanger.calls.Load() != 0 {
				t.Error("an unidentified caller caused upstream calls")
			}
		})
	}
}

func TestDefaultServiceAccountIsRefusedUnlessAllowed(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		e := newEnv(t, nil)
		e.serviceAccount("ns", "default", roleA)
		e.pod("10.0.0.4", "ns", "p", "default")
		r := e.get("10.0.0.4")
		if r.status != http.StatusForbidden || r.errObj["code"] != CodeDefaultServiceAccount {
			t.Fatalf("got %d %v", r.status, r.errObj)
		}
		if e.tokenReqs.Load()+e.exchanger.calls.Load() != 0 {
			t.Error("the default ServiceAccount caused API or STS calls")
		}
		if !strings.Contains(e.logs.String(), `"reason":"DefaultServiceAccount"`) || !strings.Contains(e.logs.String(), `"pod":"p"`) {
			t.Errorf("refusal not logged with reason and pod: %s", e.logs.String())
		}
	})
	t.Run("allowed", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.AllowDefaultServiceAccount = true })
		e.serviceAccount("ns", "default", roleA)
		e.pod("10.0.0.4", "ns", "p", "default")
		if r := e.get("10.0.0.4"); r.status != http.StatusOK {
			t.Fatalf("got %d %s", r.status, r.body)
		}
	})
}

func TestServiceAccountWithoutRole(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("ns", "plain", "")
	e.pod("10.0.0.6", "ns", "p", "plain")
	e.pod("10.0.0.7", "ns", "q", "ghost")
	r := e.get("10.0.0.6")
	if r.status != http.StatusForbidden || r.errObj["code"] != CodeNoRole ||
		!strings.Contains(r.errObj["message"], roleAnnotation) || !strings.Contains(r.errObj["message"], "ns/plain") {
		t.Fatalf("got %d %v", r.status, r.errObj)
	}
	// A live pod's ServiceAccount that does not exist is being replaced
	// (or was deleted): retryable, never a 403, which SDKs treat as final.
	r = e.get("10.0.0.7")
	if r.status != http.StatusServiceUnavailable || r.errObj["code"] != CodeServiceAccountMissing || r.header.Get("Retry-After") == "" {
		t.Fatalf("missing ServiceAccount: got %d %v", r.status, r.errObj)
	}
	if e.tokenReqs.Load() != 0 {
		t.Error("TokenRequest made for a pod without a role")
	}
}

func TestAllowedRolePatterns(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clouds[0].AllowedIdentities = []string{"arn:aws:iam::111122223333:role/team-a/*"} })
	e.serviceAccount("ns", "ok", roleA)
	e.serviceAccount("ns", "bad", roleB)
	e.pod("10.0.0.1", "ns", "p", "ok")
	e.pod("10.0.0.2", "ns", "q", "bad")
	if r := e.get("10.0.0.1"); r.status != http.StatusOK {
		t.Fatalf("allowed role refused: %d %s", r.status, r.body)
	}
	r := e.get("10.0.0.2")
	if r.status != http.StatusForbidden || r.errObj["code"] != CodeRoleNotAllowed {
		t.Fatalf("role outside the patterns: %d %v", r.status, r.errObj)
	}
	if e.exchanger.calls.Load() != 1 {
		t.Errorf("exchanges = %d, want 1", e.exchanger.calls.Load())
	}
}

func TestGlobMatch(t *testing.T) {
	cases := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "arn:aws:iam::1:role/x", true},
		{"arn:aws:iam::1:role/*", "arn:aws:iam::1:role/path/deep/x", true},
		{"arn:aws:iam::1:role/app-?", "arn:aws:iam::1:role/app-7", true},
		{"arn:aws:iam::1:role/app-?", "arn:aws:iam::1:role/app-77", false},
		{"arn:aws:iam::*:role/reader", "arn:aws:iam::2:role/reader", true},
		{"arn:aws:iam::*:role/reader", "arn:aws:iam::2:role/readers", false},
		{"arn:aws:iam::1:role/x", "arn:aws:iam::1:role/x", true},
		{"arn:aws:iam::1:role/x", "arn:aws:iam::1:role/xy", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"", "", true},
	}
	for _, c := range cases {
		if got := globMatch(c.pattern, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %t, want %t", c.pattern, c.s, got, c.want)
		}
	}
}

// Credentials with less than FreshnessFloor left are replaced before they
// are served, and while upstream fails a still valid one is served; an
// expired one never is.
func TestFreshnessAndStaleServing(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.0.8")
	first := e.get("10.0.0.8")

	e.clock.Step(50 * time.Minute) // 10 minutes left: below the floor
	second := e.get("10.0.0.8")
	if second.creds.AccessKeyId() == first.creds.AccessKeyId() {
		t.Fatal("served credentials with 10 minutes left although fresh ones could be had")
	}
	if left := mustParse(t, second.creds.Expiration).Sub(e.clock.Now()); left < FreshnessFloor {
		t.Fatalf("served credentials with %s left", left)
	}

	// Upstream fails from now on.
	e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Transient, Code: "ServiceUnavailable", Err: errors.New("down")}
	})
	e.clock.Step(50 * time.Minute) // 10 minutes left, refresh fails: serve the old one
	stale := e.get("10.0.0.8")
	if stale.status != http.StatusOK || stale.creds.AccessKeyId() != second.creds.AccessKeyId() {
		t.Fatalf("while upstream fails, a valid credential must be served: %d %s", stale.status, stale.body)
	}
	if e.counter("credbroker_cache_stale_served_total", nil) < 1 {
		t.Error("stale serving not counted")
	}
	e.clock.Step(10 * time.Minute) // expired
	expired := e.get("10.0.0.8")
	if expired.status != http.StatusServiceUnavailable || expired.header.Get("Retry-After") == "" {
		t.Fatalf("expired credentials: got %d %s", expired.status, expired.body)
	}
}

func mustParse(t *testing.T, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func (c awsCredentials) AccessKeyId() string { return c.AccessKeyID }

func TestConcurrentFirstRequestsShareOneUpstreamCall(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.0.10")
	_, release := e.exchanger.hold()
	const callers = 50
	var wg sync.WaitGroup
	results := make([]response, callers)
	for i := range callers {
		wg.Go(func() { results[i] = e.get("10.0.0.10") })
	}
	testfake.Eventually(t, "all callers to miss the cache", func() bool {
		return e.counter("credbroker_cache_misses_total", nil) == callers
	})
	close(release)
	wg.Wait()
	for i, r := range results {
		if r.status != http.StatusOK || r.creds.AccessKeyId() != results[0].creds.AccessKeyId() {
			t.Fatalf("caller %d: %d %s", i, r.status, r.body)
		}
	}
	if tr, x := e.tokenReqs.Load(), e.exchanger.calls.Load(); tr != 1 || x != 1 {
		t.Fatalf("TokenRequests = %d, exchanges = %d; want 1 and 1", tr, x)
	}
}

func TestOutageKeepsCachedPodsAndBacksOff(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("ns", "sa", roleA)
	e.pod("10.0.0.11", "ns", "cached", "sa")
	e.pod("10.0.0.12", "ns", "new", "sa")
	if r := e.get("10.0.0.11"); r.status != http.StatusOK {
		t.Fatal(r.body)
	}
	e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Transient, Err: errors.New("connection refused")}
	})
	for range 3 {
		if r := e.get("10.0.0.11"); r.status != http.StatusOK {
			t.Fatalf("cached pod not served during the outage: %d", r.status)
		}
	}
	r := e.get("10.0.0.12")
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("new pod during outage: %d %v", r.status, r.header)
	}
	calls := e.exchanger.calls.Load()
	for range 5 {
		e.get("10.0.0.12")
	}
	if e.exchanger.calls.Load() != calls {
		t.Fatalf("retries within the backoff reached upstream: %d calls, want %d", e.exchanger.calls.Load(), calls)
	}
	e.exchanger.setFn(nil) // upstream back
	e.clock.Step(maxTransientBackoff)
	if r := e.get("10.0.0.12"); r.status != http.StatusOK {
		t.Fatalf("new pod after recovery: %d %s", r.status, r.body)
	}
}

func TestUpstreamErrorClasses(t *testing.T) {
	cases := []struct {
		name     string
		xerr     error
		tokenErr error
		status   int
		code     string
	}{
		// Denials are provisional at first (IAM is eventually consistent);
		// TestDenialIsRetriedThenFinal covers the rest.
		{name: "access denied", xerr: &exchange.Error{Kind: exchange.Denied, Code: "AccessDenied", Err: errors.New("no")}, status: 503, code: CodeUpstreamDenied},
		{name: "invalid token", xerr: &exchange.Error{Kind: exchange.InvalidToken, Code: "InvalidIdentityToken", Err: errors.New("no")}, status: 503, code: CodeUpstreamDenied},
		{name: "invalid request", xerr: &exchange.Error{Kind: exchange.InvalidRequest, Code: "ValidationError", Err: errors.New("no")}, status: 400, code: CodeInvalidRole},
		{name: "throttled", xerr: &exchange.Error{Kind: exchange.Throttled, Code: "Throttling", Err: errors.New("slow")}, status: 429, code: CodeThrottled},
		{name: "transient", xerr: &exchange.Error{Kind: exchange.Transient, Err: errors.New("503")}, status: 503, code: CodeUnavailable},
		{name: "token request throttled", tokenErr: apierrors.NewTooManyRequests("slow", 1), status: 429, code: CodeThrottled},
		{name: "token request forbidden by admission", tokenErr: apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts/token"}, "sa", errors.New("denied by ValidatingAdmissionPolicy")), status: 503, code: CodeTokenRequestRefused},
		{name: "token request invalid", tokenErr: apierrors.NewInvalid(schema.GroupKind{Group: "authentication.k8s.io", Kind: "TokenRequest"}, "sa", nil), status: 403, code: CodeTokenRequestRefused},
		{name: "ServiceAccount missing at TokenRequest", tokenErr: apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccounts"}, "sa"), status: 503, code: CodeServiceAccountMissing},
		{name: "pod gone at the API", tokenErr: apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"), status: 503, code: CodePodNotIdentified},
		{name: "pod UID replaced at the API", tokenErr: apierrors.NewConflict(schema.GroupResource{Resource: "Pod"}, "p", errors.New("uid mismatch")), status: 503, code: CodePodNotIdentified},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, _ := newEnvWithPod(t, "10.0.0.13")
			if c.tokenErr != nil {
				e.tokenErr.Store(&c.tokenErr)
			}
			if c.xerr != nil {
				e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) { return exchange.Credentials{}, c.xerr })
			}
			r := e.get("10.0.0.13")
			if r.status != c.status || r.errObj["code"] != c.code {
				t.Fatalf("got %d %v, want %d %s", r.status, r.errObj, c.status, c.code)
			}
			if (c.status == 429 || c.status == 503) && r.header.Get("Retry-After") == "" {
				t.Error("retryable answer without Retry-After")
			}
			// A second request inside the negative-cache window makes no upstream call.
			tr, x := e.tokenReqs.Load(), e.exchanger.calls.Load()
			e.get("10.0.0.13")
			if e.tokenReqs.Load() != tr || e.exchanger.calls.Load() != x {
				t.Error("a failed fetch was retried at once instead of backing off")
			}
		})
	}
}

func TestCacheIsBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.CacheSize = 2 })
	e.serviceAccount("ns", "sa", roleA)
	for i := range 3 {
		e.pod(fmt.Sprintf("10.0.1.%d", i), "ns", fmt.Sprintf("p%d", i), "sa")
		if r := e.get(fmt.Sprintf("10.0.1.%d", i)); r.status != 200 {
			t.Fatal(r.body)
		}
	}
	if n := e.broker.cache.Len(); n != 2 {
		t.Fatalf("cache holds %d entries, bound is 2", n)
	}
	if e.counter("credbroker_cache_evictions_total", map[string]string{"reason": evictCapacity}) != 1 {
		t.Error("capacity eviction not counted")
	}
}

// A pod announced by the resolver is fetched in the background, so that
// its first request is a cache hit; later the credential is refreshed
// before it falls below the freshness floor, without any request.
func TestPrefetchAndBackgroundRefresh(t *testing.T) {
	e, p := newEnvWithPod(t, "10.0.0.20")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.broker.Run(ctx) }()
	defer func() { cancel(); <-done }()

	e.broker.PodReady(p)
	testfake.Eventually(t, "prefetch", func() bool { return e.cached(p.UID) })
	testfake.Eventually(t, "the prefetch queue to drain", e.broker.Prefetched)
	if r := e.get("10.0.0.20"); r.status != 200 || e.counter("credbroker_cache_hits_total", nil) != 1 {
		t.Fatalf("first request after prefetch was not a hit: %d", r.status)
	}
	if e.exchanger.calls.Load() != 1 {
		t.Fatalf("exchanges = %d", e.exchanger.calls.Load())
	}
	// Refresh is due at 40-60% of the 45 fresh minutes: 27 minutes in, it
	// has happened, with no request.
	for range 27 {
		e.clock.Step(time.Minute)
	}
	testfake.Eventually(t, "background refresh", func() bool { return e.exchanger.calls.Load() == 2 })
	r := e.get("10.0.0.20")
	if left := mustParse(t, r.creds.Expiration).Sub(e.clock.Now()); left < 45*time.Minute {
		t.Fatalf("after refresh, served credential has %s left", left)
	}
	// A pod that leaves stops being refreshed. Its refresh comes due; the
	// test then runs what a worker would run for it, synchronously, so the
	// check does not depend on when the workers get to it.
	e.broker.PodGone(p)
	for range 60 {
		e.clock.Step(time.Minute)
	}
	if _, err := e.broker.sync(ctx, entryKey{uid: p.UID, req: awsRequest}); err != nil {
		t.Fatalf("sync of a departed pod: %v", err)
	}
	if n := e.exchanger.calls.Load(); n != 2 || e.cached(p.UID) {
		t.Fatalf("a departed pod was refreshed: %d exchanges, cached %v", n, e.cached(p.UID))
	}
}

func TestPrefetchSkipsPodsWithoutRole(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("ns", "plain", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.broker.Run(ctx) }()
	e.broker.PodReady(e.pod("10.0.0.21", "ns", "p", "plain"))
	e.broker.PodReady(e.pod("10.0.0.22", "ns", "q", "default"))
	testfake.Eventually(t, "both prefetches to be tried", e.broker.Prefetched)
	cancel()
	<-done
	if e.tokenReqs.Load() != 0 {
		t.Fatalf("TokenRequests for pods that get no credentials: %d", e.tokenReqs.Load())
	}
}

// A change of the role annotation takes effect at once (the broker watches
// ServiceAccounts), and the pod's cached credentials for the old role are
// not served after it.
func TestRoleChangeTakesEffect(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.0.30")
	if r := e.get("10.0.0.30"); r.creds.AccountID != "111122223333" {
		t.Fatal(r.body)
	}
	e.setRole("ns", "sa", roleB)
	if r := e.get("10.0.0.30"); r.status != 200 || r.creds.AccountID != "444455556666" {
		t.Fatalf("after the annotation changed the old role is still served: %d %s", r.status, r.body)
	}
}

func TestMetricLabelsAreBounded(t *testing.T) {
	e := newEnv(t, nil)
	e.serviceAccount("ns", "sa", roleA)
	for i := range 20 {
		addr := fmt.Sprintf("10.1.0.%d", i)
		e.pod(addr, "ns", fmt.Sprintf("pod-%d", i), "sa")
		e.get(addr)
	}
	mfs, _ := e.reg.Gather()
	allowed := map[string]bool{}
	for _, v := range []string{upstreamTokenRequest, string(exchange.AWS), resultOK, resultDenied,
		resultThrottled, resultError, evictCapacity, evictPodGone, evictPodDeleted, evictRoleChanged, evictDenied, evictExpired, evictPodLimit} {
		allowed[v] = true
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !allowed[lp.GetValue()] {
					t.Errorf("metric %s has label %s=%q outside the fixed set", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

func TestConfigValidation(t *testing.T) {
	base := func() Config {
		return Config{ServiceAccounts: kubetest.ServiceAccounts(newEnv(t, nil).client), Resolver: &testfake.Resolver{},
			Clouds: []Cloud{awsCloud(&fakeExchanger{})}}
	}
	cases := map[string]func(*Config){
		"no client":    func(c *Config) { c.ServiceAccounts = nil },
		"no resolver":  func(c *Config) { c.Resolver = nil },
		"no exchanger": func(c *Config) { c.Clouds[0].Exchanger = nil },
		"no clouds":    func(c *Config) { c.Clouds = nil },
		"cloud twice":  func(c *Config) { c.Clouds = append(c.Clouds, c.Clouds[0]) },
		"prefetch of no kind": func(c *Config) {
			c.Clouds[0].Prefetch = []exchange.Prefetch{{Scope: "x"}}
		},
		"short session":      func(c *Config) { c.Clouds[0].Lifetime = 20 * time.Minute },
		"negative cache":     func(c *Config) { c.CacheSize = -1 },
		"empty role pattern": func(c *Config) { c.Clouds[0].AllowedIdentities = []string{""} },
		"short token":        func(c *Config) { c.TokenExpiration = 5 * time.Minute },
		"negative timeout":   func(c *Config) { c.RequestTimeout = -time.Second },
	}
	for name, mutate := range cases {
		c := base()
		mutate(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
}

// All fetches pass one rate limiter: with the budget spent, a fetch that
// would have to wait past its deadline is refused with 429 at once, without
// an upstream call.
func TestUpstreamRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.UpstreamQPS, c.UpstreamBurst = 0.001, 1 })
	e.serviceAccount("ns", "sa", roleA)
	e.pod("10.0.2.1", "ns", "first", "sa")
	e.pod("10.0.2.2", "ns", "second", "sa")
	if r := e.get("10.0.2.1"); r.status != http.StatusOK {
		t.Fatalf("first fetch within the burst: %d %s", r.status, r.body)
	}
	r := e.get("10.0.2.2")
	if r.status != http.StatusTooManyRequests || r.errObj["code"] != CodeThrottled || r.header.Get("Retry-After") == "" {
		t.Fatalf("fetch beyond the rate limit: %d %v", r.status, r.errObj)
	}
	if e.tokenReqs.Load() != 1 || e.exchanger.calls.Load() != 1 {
		t.Fatalf("TokenRequests %d, exchanges %d; want 1 and 1", e.tokenReqs.Load(), e.exchanger.calls.Load())
	}
}
