package podresolve

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// resolves waits until Resolve(ip) gives pod name (or, with name "", an
// error matching want).
func (h *harness) resolves(t *testing.T, ip, name string, want error) {
	t.Helper()
	h.waitUntil(t, "Resolve("+ip+") settles", func() bool {
		p, err := h.r.Resolve(t.Context(), netip.MustParseAddr(ip))
		if name != "" {
			return err == nil && p.Name == name
		}
		return errors.Is(err, want)
	})
}

func (h *harness) timers() int {
	h.r.mu.RLock()
	defer h.r.mu.RUnlock()
	return len(h.r.graceTimers)
}

func (h *harness) heard(t *testing.T, want ...string) {
	t.Helper()
	if got := h.rec.take(); !slices.Equal(got, want) {
		t.Errorf("listener heard\n  %q\nwant\n  %q", got, want)
	}
}

// A pod being deleted is served, with no PodGone, until its
// deletionTimestamp on the resolver's clock, and never after, whatever its
// later updates say.
func TestGracePeriodEndsOnTheClock(t *testing.T) {
	h := newHarness(t, harnessOpts{}, mkPod("a", ips("10.0.0.1")), mkPod("b", ips("10.0.0.2")))
	h.rec.take()
	deadline := t0.Add(30 * time.Second)
	h.do(t, "a is being deleted", update(mkPod("a", deletingUntil(deadline), ips("10.0.0.1"))))
	h.check(t, []want{{ip: "10.0.0.1", pod: "a"}})
	h.heard(t)
	if h.timers() != 1 {
		t.Errorf("%d grace timers, want 1", h.timers())
	}

	h.clock.Step(30*time.Second - time.Millisecond)
	h.check(t, []want{{ip: "10.0.0.1", pod: "a"}})
	h.heard(t)

	h.clock.Step(time.Millisecond)
	h.resolves(t, "10.0.0.1", "", ErrNotFound)
	h.heard(t, ev("gone", "a", "10.0.0.1"))

	// The kubelet writes its status again while it stops the containers.
	h.do(t, "a's status updated", update(mkPod("a", deletingUntil(deadline), ips("10.0.0.1"),
		func(p *corev1.Pod) { p.Labels = map[string]string{"x": "y"} })))
	h.do(t, "a deleted", del("a"))
	h.check(t, []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "10.0.0.2", pod: "b"}})
	h.heard(t)
	if got := h.r.Len(); got != 1 {
		t.Errorf("Len() = %d, want 1", got)
	}
	if h.timers() != 0 {
		t.Errorf("%d grace timers left, want 0", h.timers())
	}
}

// A second deletion with a shorter grace period moves the deadline
// earlier; one already past ends the pod at once.
func TestGracePeriodShortened(t *testing.T) {
	h := newHarness(t, harnessOpts{}, mkPod("a", ips("10.0.0.1")), mkPod("b", ips("10.0.0.2")))
	h.rec.take()
	h.do(t, "a is being deleted", update(mkPod("a", deleting(), ips("10.0.0.1"))))
	h.do(t, "a's grace period is shortened", update(mkPod("a", deletingUntil(t0.Add(10*time.Second)), ips("10.0.0.1"))))
	h.check(t, []want{{ip: "10.0.0.1", pod: "a"}})
	h.clock.Step(10 * time.Second)
	h.resolves(t, "10.0.0.1", "", ErrNotFound)
	h.heard(t, ev("gone", "a", "10.0.0.1"))

	h.do(t, "b is being deleted with no grace period left", update(mkPod("b", deletingUntil(h.clock.Now()), ips("10.0.0.2"))))
	h.check(t, []want{{ip: "10.0.0.2", err: ErrNotFound}})
	h.heard(t, ev("gone", "b", "10.0.0.2"))
	if h.timers() != 0 {
		t.Errorf("%d grace timers left, want 0", h.timers())
	}
}

// Invariant 1: a pod being deleted loses its address to any pod claiming
// it, at once and for good; its timer goes with it.
func TestGracePeriodAddressTaken(t *testing.T) {
	h := newHarness(t, harnessOpts{}, mkPod("old", ips("10.0.0.1")))
	h.rec.take()
	h.do(t, "old is being deleted", update(mkPod("old", deletingUntil(t0.Add(time.Minute)), ips("10.0.0.1"))))
	h.do(t, "new takes old's address", create(mkPod("new", ips("10.0.0.1"))))
	h.check(t, []want{{ip: "10.0.0.1", pod: "new"}})
	h.heard(t, ev("gone", "old", "10.0.0.1"), ev("ready", "new", "10.0.0.1"))
	if h.timers() != 0 {
		t.Errorf("%d grace timers left, want 0", h.timers())
	}
	h.do(t, "new moves away", update(mkPod("new", ips("10.0.0.9"))))
	h.clock.Step(time.Hour)
	h.check(t, []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "10.0.0.9", pod: "new"}})
	h.heard(t, ev("ready", "new", "10.0.0.9"))
}
