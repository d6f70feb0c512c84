package podresolve

import (
	"slices"
	"testing"
	"time"
)

// TestAttestView: pkg/attest sees exactly the pods Resolve would serve:
// not a displaced pod, not a pod past its deletion grace period.
func TestAttestView(t *testing.T) {
	h := newHarness(t, harnessOpts{},
		mkPod("a", ips("10.0.0.1")),
		mkPod("old", ips("10.0.0.3")),
		mkPod("ended", ips("10.0.0.4"), deletingUntil(t0.Add(-time.Second))),
		mkPod("host", ips("192.168.1.20"), hostNet()),
	)
	h.waitSynced(t)
	// A newer claim of old's address, seen after the initial list:
	// old is displaced.
	h.do(t, "create new", create(mkPod("new", ips("10.0.0.3"), createdAfter(time.Minute))))
	var names []string
	for _, p := range h.r.LivePods() {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if want := []string{"a", "new"}; !slices.Equal(names, want) {
		t.Errorf("LivePods = %v, want %v", names, want)
	}
	for name, want := range map[string]bool{"a": true, "new": true, "old": false, "ended": false, "host": false, "nobody": false} {
		p, ok := h.r.PodByUID(mkPod(name).UID)
		if ok != want || (ok && p.Name != name) {
			t.Errorf("PodByUID(%s-uid) = %q, %v; want %v", name, p.Name, ok, want)
		}
	}
}
