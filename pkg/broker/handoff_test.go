package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
)

// handOffEnvs is an old agent holding one pod's credentials and a new one
// seeing the same pod; mutate configures the new one.
func handOffEnvs(t *testing.T, mutate func(*Config)) (old, successor *testEnv, c Carried) {
	t.Helper()
	old = newEnv(t, nil)
	old.serviceAccount("shop", "cart", roleA)
	p := old.pod("10.0.0.5", "shop", "cart-1", "cart")
	old.broker.PodReady(p)
	if r := old.get("10.0.0.5"); r.status != 200 {
		t.Fatalf("old agent: %d %s", r.status, r.body)
	}
	out := old.broker.Export()
	if len(out) != 1 {
		t.Fatalf("Export: %d entries, want 1", len(out))
	}
	successor = newEnv(t, mutate)
	return old, successor, out[0]
}

func importReason(err error) string {
	var r *ImportRefusal
	if errors.As(err, &r) {
		return r.Reason
	}
	if err != nil {
		return "not an ImportRefusal: " + err.Error()
	}
	return ""
}

func TestImportTakesWhatItWouldServeItself(t *testing.T) {
	old, e, c := handOffEnvs(t, nil)
	e.serviceAccount("shop", "cart", roleA)
	e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart"))
	if err := e.broker.Import(c); err != nil {
		t.Fatal(err)
	}
	r := e.get("10.0.0.5")
	want := old.get("10.0.0.5")
	if r.status != 200 || r.creds.AccessKeyID != want.creds.AccessKeyID {
		t.Fatalf("after the hand-off: %d %s, want the old agent's %s", r.status, r.creds.AccessKeyID, want.creds.AccessKeyID)
	}
	if n, tr := e.exchanger.calls.Load(), e.tokenReqs.Load(); n != 0 || tr != 0 {
		t.Errorf("the new agent made %d exchanges and %d TokenRequests, want none", n, tr)
	}
	if reason := importReason(e.broker.Import(c)); reason != ImportCached {
		t.Errorf("a second import of the same key: %q, want %q", reason, ImportCached)
	}
}

// The new agent decides again, with its own policy and its own view of the
// pod; it never trusts the old agent's decision.
func TestImportRefuses(t *testing.T) {
	// 30 of 45 fresh minutes gone: past the latest refresh point (60%).
	stale := func(c *Carried) {
		c.FetchedAt, c.Credentials.Expiration = t0.Add(-30*time.Minute), t0.Add(30*time.Minute)
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		setup  func(e *testEnv)
		carry  func(c *Carried)
		reason string
	}{
		{name: "identity no longer allowed", reason: ImportPolicy,
			mutate: func(c *Config) { c.Clouds[0].AllowedIdentities = []string{"arn:aws:iam::444455556666:role/*"} }},
		{name: "ServiceAccount names another role", reason: ImportPolicy,
			setup: func(e *testEnv) {
				e.serviceAccount("shop", "cart", roleB)
				e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart"))
			}},
		{name: "ServiceAccount lost its annotation", reason: ImportPolicy,
			setup: func(e *testEnv) {
				e.serviceAccount("shop", "cart", "")
				e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart"))
			}},
		{name: "default ServiceAccount", reason: ImportPolicy,
			setup: func(e *testEnv) {
				e.serviceAccount("shop", "default", roleA)
				e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "default"))
			},
			carry: func(c *Carried) { c.ServiceAccount = "default" }},
		{name: "pod not in the informer", reason: ImportUnknownPod,
			setup: func(e *testEnv) { e.serviceAccount("shop", "cart", roleA) }},
		{name: "pod gone", reason: ImportUnknownPod,
			setup: func(e *testEnv) {
				e.serviceAccount("shop", "cart", roleA)
				p := e.pod("10.0.0.5", "shop", "cart-1", "cart")
				e.broker.PodReady(p)
				e.broker.PodGone(p)
			}},
		{name: "same UID, another ServiceAccount", reason: ImportPodMismatch,
			setup: func(e *testEnv) {
				e.serviceAccount("shop", "other", roleA)
				e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "other"))
			}},
		{name: "ServiceAccount not in the watch", reason: ImportUnverified,
			setup: func(e *testEnv) { e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart")) }},
		{name: "too old", reason: ImportStale, carry: stale},
		{name: "expired", reason: ImportStale, carry: func(c *Carried) { c.Credentials.Expiration = t0.Add(-time.Minute) }},
		{name: "outlives this agent's lifetime", reason: ImportPolicy, carry: func(c *Carried) { c.Credentials.Expiration = t0.Add(3 * time.Hour) }},
		{name: "no secret key", reason: ImportMalformed, carry: func(c *Carried) { c.Credentials.SecretAccessKey = "" }},
		{name: "no expiration", reason: ImportMalformed, carry: func(c *Carried) { c.Credentials.Expiration = time.Time{} }},
		{name: "kind other than asked", reason: ImportMalformed, carry: func(c *Carried) { c.Credentials.Kind = exchange.KindAccessToken }},
		{name: "key names an identity", reason: ImportMalformed, carry: func(c *Carried) { c.Request.Identity = roleA }},
		{name: "cloud not served", reason: ImportPolicy, carry: func(c *Carried) { c.Request.Cloud = exchange.GCP }},
		{name: "principal differs from the carried one", reason: ImportPolicy, carry: func(c *Carried) { c.Identity = roleB }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, e, c := handOffEnvs(t, tc.mutate)
			if tc.setup != nil {
				tc.setup(e)
			} else {
				e.serviceAccount("shop", "cart", roleA)
				e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart"))
			}
			if tc.carry != nil {
				tc.carry(&c)
			}
			if got := importReason(e.broker.Import(c)); got != tc.reason {
				t.Fatalf("Import: %q, want %q", got, tc.reason)
			}
			if e.cached(c.PodUID) {
				t.Error("a refused entry is cached")
			}
		})
	}
}

// A taken entry is one the prefetch does not fetch again; a pod without one
// is prefetched as before, once fetches are released.
func TestHeldPrefetchFetchesOnlyWhatTheHandOffLacks(t *testing.T) {
	_, e, c := handOffEnvs(t, func(c *Config) { c.Workers = 2 })
	e.broker.HoldFetches()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.broker.Run(ctx) }()
	defer func() { cancel(); <-done }()
	e.serviceAccount("shop", "cart", roleA)
	e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart"))
	e.broker.PodReady(e.pod("10.0.0.6", "shop", "cart-2", "cart"))
	if err := e.broker.Import(c); err != nil {
		t.Fatal(err)
	}
	if e.broker.Prefetched() {
		t.Fatal("prefetched while fetches are held")
	}
	e.broker.ReleaseFetches()
	testfake.Eventually(t, "the prefetch", e.broker.Prefetched)
	if n := e.exchanger.calls.Load(); n != 1 {
		t.Errorf("exchanges after the hand-off: %d, want 1 (the pod it did not carry)", n)
	}
	if !e.cached("uid-shop-cart-2") {
		t.Error("the pod the hand-off lacked was not prefetched")
	}
	// The taken entry is refreshed like a fetched one: before it goes stale.
	e.clock.Step(35 * time.Minute)
	testfake.Eventually(t, "the taken entry's refresh", func() bool { return e.exchanger.calls.Load() >= 2 })
}

func TestExportLeavesOutWhatIsNotServable(t *testing.T) {
	old, _, _ := handOffEnvs(t, nil)
	old.serviceAccount("shop", "gone", roleA)
	p := old.pod("10.0.0.7", "shop", "gone-1", "gone")
	old.broker.PodReady(p)
	if r := old.get("10.0.0.7"); r.status != 200 {
		t.Fatal(r.body)
	}
	old.broker.PodGone(p)
	if n := len(old.broker.Export()); n != 1 {
		t.Errorf("Export after a pod left: %d entries, want 1", n)
	}
	old.clock.Step(46 * time.Minute)
	if n := len(old.broker.Export()); n != 0 {
		t.Errorf("Export of credentials below the freshness floor: %d entries, want 0", n)
	}
}

// A taken entry keeps its place in the refresh cycle (40-60% of its fresh
// span after it was fetched, never before now), so that a rollout neither
// refetches at once nor bunches the node's refreshes up.
func TestImportKeepsTheRefreshCycle(t *testing.T) {
	for _, age := range []time.Duration{0, 10 * time.Minute, 20 * time.Minute, 27 * time.Minute} {
		t.Run(age.String(), func(t *testing.T) {
			_, e, c := handOffEnvs(t, nil)
			e.serviceAccount("shop", "cart", roleA)
			e.broker.PodReady(e.pod("10.0.0.5", "shop", "cart-1", "cart"))
			c.FetchedAt, c.Credentials.Expiration = t0.Add(-age), t0.Add(time.Hour-age)
			if err := e.broker.Import(c); err != nil {
				t.Fatal(err)
			}
			got, _ := e.broker.cache.Peek(entryKey{uid: c.PodUID, req: awsRequest})
			earliest, latest := c.FetchedAt.Add(18*time.Minute), c.FetchedAt.Add(27*time.Minute)
			if earliest.Before(t0) {
				earliest = t0
			}
			if got.refreshAt.Before(earliest) || got.refreshAt.After(latest) {
				t.Errorf("refresh at %v after now, want between %v and %v", got.refreshAt.Sub(t0), earliest.Sub(t0), latest.Sub(t0))
			}
		})
	}
}
