package podresolve

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// podKey names a pod the way the informer store does (namespace/name), so
// that tombstones, which may carry only the key, can be matched.
type podKey struct {
	namespace, name string
}

// entry is one live pod in the index.
type entry struct {
	pod     Pod
	created time.Time
	// displaced is set once another pod claims one of this pod's
	// addresses and wins the claim (see index.add). It clears only when
	// the pod's own addresses change (see index.readdress).
	displaced bool
}

// eventKind says which Listener method an event goes to.
type eventKind uint8

const (
	eventReady eventKind = iota + 1
	eventGone
)

type event struct {
	kind eventKind
	pod  Pod
	// by is the pod that displaced this one, for the log; zero otherwise.
	by Pod
}

// index maps addresses to the live pods claiming them. It is not safe for
// concurrent use: the Resolver guards it.
type index struct {
	byKey map[podKey]*entry
	byIP  map[netip.Addr][]*entry
	// resolvable counts entries that are not displaced.
	resolvable int
}

func newIndex() index {
	return index{
		byKey: make(map[podKey]*entry),
		byIP:  make(map[netip.Addr][]*entry),
	}
}

// lookupResult is what the index knows about one address.
type lookupResult uint8

const (
	// lookupMiss: no claimant, or a single one that is displaced.
	lookupMiss lookupResult = iota
	lookupHit
	lookupAmbiguous
)

func (ix *index) lookup(ip netip.Addr) (Pod, lookupResult) {
	cands := ix.byIP[ip]
	switch {
	case len(cands) == 0:
		return Pod{}, lookupMiss
	case len(cands) > 1:
		return Pod{}, lookupAmbiguous
	case cands[0].displaced:
		return Pod{}, lookupMiss
	default:
		return cands[0].pod, lookupHit
	}
}

// set brings the index in line with the latest state of the pod at key.
// next is nil when the pod is gone or not indexable. initial is true while
// the informer delivers its first list. Events for listeners are appended
// to evs. It reports whether the index changed.
func (ix *index) set(key podKey, next *entry, initial bool, evs []event) ([]event, bool) {
	old := ix.byKey[key]
	switch {
	case old == nil && next == nil:
		return evs, false
	case old != nil && next == nil:
		return ix.remove(key, old, evs), true
	case old == nil:
		return ix.add(key, next, initial, evs), true
	case old.pod.UID != next.pod.UID:
		// The informer missed a delete and a pod with the same name
		// replaced it: two different pods.
		evs = ix.remove(key, old, evs)
		return ix.add(key, next, initial, evs), true
	case slices.Equal(old.pod.IPs, next.pod.IPs):
		// Nothing the index uses can change for a pod except its
		// addresses and liveness (namespace, name, UID and
		// ServiceAccount are immutable).
		return evs, false
	default:
		return ix.readdress(key, old, next, initial, evs), true
	}
}

// readdress applies new addresses to a pod that is still the same pod (its
// sandbox was recreated, or it gained or lost an address family). Its
// credentials stay its own, so listeners hear no PodGone while it stays
// resolvable, only a PodReady with the new addresses.
//
// Whether it is displaced is settled afresh: a displacement was about an
// address, and a pod that moved off every contested address (two pods
// swapping addresses, their statuses updated one at a time) is live and
// owns its new ones. It stays displaced only while it still sits on an
// address it already had that another pod also claims.
func (ix *index) readdress(key podKey, old, next *entry, initial bool, evs []event) []event {
	ix.unlink(key, old)
	if old.displaced {
		for _, ip := range next.pod.IPs {
			if slices.Contains(old.pod.IPs, ip) && len(ix.byIP[ip]) > 0 {
				next.displaced = true
				break
			}
		}
	}
	ix.byKey[key] = next
	for _, ip := range next.pod.IPs {
		others := ix.byIP[ip]
		if !slices.Contains(old.pod.IPs, ip) {
			for _, o := range others {
				evs = ix.settle(o, next, initial, evs)
			}
		}
		ix.byIP[ip] = append(others, next)
	}
	switch {
	case !old.displaced && next.displaced:
		ix.resolvable--
		evs = append(evs, event{kind: eventGone, pod: old.pod})
	case old.displaced && !next.displaced:
		ix.resolvable++
		evs = append(evs, event{kind: eventReady, pod: next.pod})
	case !next.displaced:
		evs = append(evs, event{kind: eventReady, pod: next.pod})
	}
	return evs
}

// unlink takes e out of the maps without counting or announcing anything.
func (ix *index) unlink(key podKey, e *entry) {
	delete(ix.byKey, key)
	for _, ip := range e.pod.IPs {
		rest := slices.DeleteFunc(ix.byIP[ip], func(c *entry) bool { return c == e })
		if len(rest) == 0 {
			delete(ix.byIP, ip)
		} else {
			ix.byIP[ip] = rest
		}
	}
}

func (ix *index) remove(key podKey, e *entry, evs []event) []event {
	ix.unlink(key, e)
	if !e.displaced {
		ix.resolvable--
		evs = append(evs, event{kind: eventGone, pod: e.pod})
	}
	return evs
}

// add enters e under key. Each of its addresses is a new claim, which
// settles who owns it against the pods already claiming it.
func (ix *index) add(key podKey, e *entry, initial bool, evs []event) []event {
	ix.byKey[key] = e
	for _, ip := range e.pod.IPs {
		others := ix.byIP[ip]
		for _, o := range others {
			evs = ix.settle(o, e, initial, evs)
		}
		ix.byIP[ip] = append(others, e)
	}
	if !e.displaced {
		ix.resolvable++
		evs = append(evs, event{kind: eventReady, pod: e.pod})
	}
	return evs
}

// settle decides, when newcomer claims an address old already claims,
// which of the two is stale, and displaces it. An address is only reused
// after its first owner is gone, so the pod created earlier is the stale
// one. On a creationTimestamp tie (one-second resolution) the order in
// which the claims were seen decides, except during the initial list, whose
// order means nothing: then neither is displaced and the address simply
// stays ambiguous until one object goes.
func (ix *index) settle(old, newcomer *entry, initial bool, evs []event) []event {
	var stale *entry
	switch {
	case old.created.Before(newcomer.created):
		stale = old
	case newcomer.created.Before(old.created):
		stale = newcomer
	case !initial:
		stale = old
	default:
		return evs
	}
	if stale.displaced {
		return evs
	}
	stale.displaced = true
	if stale == newcomer {
		// Not yet counted nor announced: add does both only for
		// entries that are not displaced.
		return evs
	}
	ix.resolvable--
	return append(evs, event{kind: eventGone, pod: stale.pod, by: newcomer.pod})
}

// entryFor returns the index entry for a stripped pod, or nil when the pod
// must not be indexed.
func entryFor(p *corev1.Pod, node string) *entry {
	if p.Spec.HostNetwork || p.DeletionTimestamp != nil ||
		p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed ||
		// The field selector already limits the informer to this node;
		// this guards against a client that ignores it.
		p.Spec.NodeName != node {
		return nil
	}
	ips := podIPs(p)
	if len(ips) == 0 {
		return nil
	}
	return &entry{
		pod: Pod{
			Namespace:      p.Namespace,
			Name:           p.Name,
			UID:            p.UID,
			ServiceAccount: p.Spec.ServiceAccountName,
			IPs:            ips,
		},
		created: p.CreationTimestamp.Time,
	}
}

// podIPs parses every status.podIPs entry (falling back to status.podIP for
// objects that lack the list), unmapped and without duplicates. Unparsable
// entries are skipped: they cannot match a source address.
func podIPs(p *corev1.Pod) []netip.Addr {
	n := len(p.Status.PodIPs)
	if n == 0 && p.Status.PodIP != "" {
		n = 1
	}
	if n == 0 {
		return nil
	}
	ips := make([]netip.Addr, 0, n)
	addOne := func(s string) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		ip = ip.Unmap().WithZone("")
		if !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	if len(p.Status.PodIPs) == 0 {
		addOne(p.Status.PodIP)
	}
	for _, pip := range p.Status.PodIPs {
		addOne(pip.IP)
	}
	if len(ips) == 0 {
		return nil
	}
	return ips
}
