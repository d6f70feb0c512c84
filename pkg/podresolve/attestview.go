package podresolve

import "k8s.io/apimachinery/pkg/types"

// PodByUID returns the pod with uid if Resolve would return it for one of
// its addresses (live, indexed, not displaced, not past its deletion grace
// period), or if it is a live hostNetwork pod kept for container mode
// (Config.Containers). It is pkg/attest's view of
// the informer: the kernel may place a connection in a pod whose address
// the informer does not (yet) show, and that pod is served only while the
// informer still has it live. O(pods): it runs once per connection at most.
func (r *Resolver) PodByUID(uid types.UID) (Pod, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.idx.byKey {
		if e.pod.UID == uid && e.served() {
			return e.pod, true
		}
	}
	return r.hostPodByUIDLocked(uid)
}

// LivePods returns every pod PodByUID would return (served: not displaced,
// not past its deletion grace period): the pods whose network
// namespaces pkg/attest may search for a connection.
func (r *Resolver) LivePods() []Pod {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pods := make([]Pod, 0, len(r.idx.byKey))
	for _, e := range r.idx.byKey {
		if e.served() {
			pods = append(pods, e.pod)
		}
	}
	return pods
}
