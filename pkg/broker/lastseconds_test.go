package broker

import (
	"net/http"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/internal/testfake"
)

// Credentials during a pod's last seconds (issue 18, invariant 12): a pod
// being deleted keeps its cached credentials, and gets fresh ones when they
// run low, until the end of its grace period; after it, nothing is cached or
// served for it. Through the real resolver, on the env's fake clock.
func TestPodServedThroughItsGracePeriod(t *testing.T) {
	e := newRealResolverEnv(t)
	e.serviceAccount("ns", "sa", roleA)
	p := runningPod("p", "sa", t0, "10.0.9.1")
	e.apply(p)
	e.resolvesTo("10.0.9.1", "p")
	first := e.get("10.0.9.1")
	if first.status != http.StatusOK || sessionOf(first) != "p" {
		t.Fatalf("before the deletion: %d %s", first.status, first.body)
	}

	// A batch job saving its state gets a two-hour grace period: longer
	// than its credentials live.
	deadline := e.clock.Now().Add(2 * time.Hour)
	p.DeletionTimestamp = &metav1.Time{Time: deadline}
	e.apply(p)
	// The informer delivers events in order: once the marker pod
	// resolves, the deletion has been handled.
	e.apply(runningPod("marker", "sa", t0, "10.0.9.2"))
	e.resolvesTo("10.0.9.2", "marker")
	if r := e.get("10.0.9.1"); r.status != http.StatusOK || r.creds.AccessKeyId() != first.creds.AccessKeyId() {
		t.Fatalf("in the grace period: %d %s; want the cached credentials", r.status, r.body)
	}
	if !e.cached("uid-p") {
		t.Fatal("the pod's credentials were evicted when its deletion started")
	}

	e.clock.Step(50 * time.Minute) // 10 minutes left: below the floor
	fresh := e.get("10.0.9.1")
	if fresh.status != http.StatusOK || sessionOf(fresh) != "p" || fresh.creds.AccessKeyId() == first.creds.AccessKeyId() {
		t.Fatalf("in the grace period, credentials running low: %d %s; want fresh ones", fresh.status, fresh.body)
	}
	if left := mustParse(t, fresh.creds.Expiration).Sub(e.clock.Now()); left < FreshnessFloor {
		t.Fatalf("in the grace period, served credentials with %s left", left)
	}

	e.clock.Step(deadline.Sub(e.clock.Now()))
	e.resolvesTo("10.0.9.1", "")
	testfake.Eventually(t, "the pod's credentials to be evicted", func() bool { return !e.cached("uid-p") })
	if r := e.get("10.0.9.1"); r.status == http.StatusOK {
		t.Fatalf("after the grace period: %d %s; want nothing", r.status, r.body)
	}
	if r := e.get("10.0.9.2"); r.status != http.StatusOK || sessionOf(r) != "marker" {
		t.Fatalf("another pod after the grace period: %d %s", r.status, r.body)
	}
}
