package podresolve

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podKey names a pod the way the informer store does (namespace/name), so
// that tombstones, which may carry only the key, can be matched.
type podKey struct {
	namespace, name string
}

// entry is one pod in the index.
type entry struct {
	pod Pod
	// claims[i] orders this pod's claim of pod.IPs[i]: the index's
	// sequence number when the informer first saw the pod claim that
	// address, or 0 for a claim seen in the initial list (whose order
	// means nothing). Bounded by the pod's addresses (one per family).
	claims []uint64
	// deadline is the end of the pod's deletion grace period (its
	// deletionTimestamp); zero while the pod is not being deleted.
	deadline time.Time
	// displaced is set once another pod makes a newer claim of one of
	// this pod's addresses (see index.settle). It clears only when the
	// pod reports new addresses of its own (see index.readdress).
	displaced bool
	// ended is set for a pod being deleted that lost an address to
	// another pod, or whose grace period is over: it is out of byIP for
	// good, and stays in byKey only so that later updates of the same pod
	// do not bring it back.
	ended bool
}

// terminating reports whether the pod is in its deletion grace period.
func (e *entry) terminating() bool { return !e.deadline.IsZero() }

// served reports whether Resolve may return the pod (for an address only
// it claims).
func (e *entry) served() bool { return !e.displaced && !e.ended }

// eventKind says which Listener method an event goes to.
type eventKind uint8

const (
	eventReady eventKind = iota + 1
	eventGone
)

// goneReason says why a pod stopped being served, for the log.
type goneReason uint8

const (
	goneLeft      goneReason = iota // deleted, terminal, without addresses
	goneDisplaced                   // a newer claim of one of its addresses
	goneTaken                       // being deleted, and another pod claims its address
	goneExpired                     // its deletion grace period ended
)

type event struct {
	kind eventKind
	pod  Pod
	why  goneReason
	// by is the pod whose claim displaced this one, for the log; zero
	// otherwise.
	by Pod
}

// index maps addresses to the pods claiming them. It is not safe for
// concurrent use: the Resolver guards it.
type index struct {
	byKey map[podKey]*entry
	// byIP holds every claimant of each address, ended pods excepted.
	byIP map[netip.Addr][]*entry
	// resolvable counts the entries that are served.
	resolvable int
	// seq numbers claims in the order the informer delivered them.
	seq uint64
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
// the informer delivers its first list; now is the resolver's clock.
// Events for listeners are appended to evs. It reports whether the index
// changed.
func (ix *index) set(key podKey, next *entry, initial bool, now time.Time, evs []event) ([]event, bool) {
	old := ix.byKey[key]
	if next != nil && next.terminating() && !now.Before(next.deadline) {
		// Its grace period is over: the kubelet has killed, or is
		// killing, whatever still runs in it.
		next.ended = true
	}
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
	case old.ended:
		return evs, false
	case next.ended:
		return ix.end(old, goneExpired, Pod{}, evs), true
	case slices.Equal(old.pod.IPs, next.pod.IPs) && old.deadline.Equal(next.deadline):
		// Nothing the index uses can change for a pod except its
		// addresses and liveness (namespace, name, UID and
		// ServiceAccount are immutable).
		return evs, false
	default:
		return ix.readdress(key, old, next, initial, evs), true
	}
}

// expire ends the grace period of the pod at key, if it is still the pod
// (uid) and the deadline the timer was armed for.
func (ix *index) expire(key podKey, uid types.UID, deadline time.Time, evs []event) ([]event, bool) {
	e := ix.byKey[key]
	if e == nil || e.pod.UID != uid || e.ended || !e.deadline.Equal(deadline) {
		return evs, false
	}
	return ix.end(e, goneExpired, Pod{}, evs), true
}

// claimSeq returns the order of a claim seen now.
func (ix *index) claimSeq(initial bool) uint64 {
	if initial {
		return 0
	}
	ix.seq++
	return ix.seq
}

// readdress applies a new state to a pod that is still the same pod: new
// addresses (its sandbox was recreated, it gained or lost an address
// family) or the start of its deletion. Its credentials stay its own, so
// listeners hear no PodGone while it stays served, only a PodReady when
// its addresses changed.
//
// An address it keeps keeps its claim's order; an address it did not have
// is a new claim. Whether it is displaced is settled afresh: a
// displacement was about an address, and a pod that moved off every
// contested address (two pods swapping addresses, their statuses updated
// one at a time) is live and owns its new ones. It stays displaced only
// while it still sits on an address it already had that another pod
// claimed later (or in the same initial list).
func (ix *index) readdress(key podKey, old, next *entry, initial bool, evs []event) []event {
	ix.unlink(key, old)
	next.claims = make([]uint64, len(next.pod.IPs))
	kept := make([]bool, len(next.pod.IPs))
	for i, ip := range next.pod.IPs {
		if j := slices.Index(old.pod.IPs, ip); j >= 0 {
			next.claims[i], kept[i] = old.claims[j], true
		} else {
			next.claims[i] = ix.claimSeq(initial)
		}
	}
	if old.displaced {
		for i := range next.pod.IPs {
			if kept[i] && ix.lostAt(next, i) {
				next.displaced = true
				break
			}
		}
	}
	ix.byKey[key] = next
	if next.terminating() && (next.displaced || ix.contested(next)) {
		// Its deletion started while another pod claims one of its
		// addresses: that pod has it, or will have it.
		next.ended = true
	} else {
		evs = ix.link(next, kept, evs)
	}
	switch was, is := old.served(), next.served(); {
	case was && !is:
		ix.resolvable--
		why := goneDisplaced
		if next.ended {
			why = goneTaken
		}
		evs = append(evs, event{kind: eventGone, pod: old.pod, why: why})
	case !was && is:
		ix.resolvable++
		evs = append(evs, event{kind: eventReady, pod: next.pod})
	case is && !slices.Equal(old.pod.IPs, next.pod.IPs):
		evs = append(evs, event{kind: eventReady, pod: next.pod})
	}
	return evs
}

// lostAt reports whether another pod's claim of e's i-th address is not
// older than e's own.
func (ix *index) lostAt(e *entry, i int) bool {
	ip := e.pod.IPs[i]
	for _, o := range ix.byIP[ip] {
		if o != e && o.claims[slices.Index(o.pod.IPs, ip)] >= e.claims[i] {
			return true
		}
	}
	return false
}

// contested reports whether another pod claims one of e's addresses.
func (ix *index) contested(e *entry) bool {
	for _, ip := range e.pod.IPs {
		for _, o := range ix.byIP[ip] {
			if o != e {
				return true
			}
		}
	}
	return false
}

// link enters e's addresses into byIP. Each address not marked kept is a
// new claim, settled against the pods already claiming it.
func (ix *index) link(e *entry, kept []bool, evs []event) []event {
	for i, ip := range e.pod.IPs {
		others := slices.Clone(ix.byIP[ip])
		ix.byIP[ip] = append(ix.byIP[ip], e)
		if kept != nil && kept[i] {
			continue
		}
		for _, o := range others {
			evs = ix.settle(o, e, e.claims[i], evs)
		}
	}
	return evs
}

// unlink takes e out of the maps without counting or announcing anything.
func (ix *index) unlink(key podKey, e *entry) {
	if ix.byKey[key] == e {
		delete(ix.byKey, key)
	}
	ix.unlinkIPs(e)
}

func (ix *index) unlinkIPs(e *entry) {
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
	if e.served() {
		ix.resolvable--
		evs = append(evs, event{kind: eventGone, pod: e.pod})
	}
	return evs
}

// end takes a pod being deleted out of byIP for good (it stays in byKey).
func (ix *index) end(e *entry, why goneReason, by Pod, evs []event) []event {
	was := e.served()
	if !e.ended {
		ix.unlinkIPs(e)
		e.ended = true
	}
	if !was {
		return evs
	}
	ix.resolvable--
	return append(evs, event{kind: eventGone, pod: e.pod, why: why, by: by})
}

// add enters e under key. Each of its addresses is a new claim, which
// settles who owns it against the pods already claiming it.
func (ix *index) add(key podKey, e *entry, initial bool, evs []event) []event {
	ix.byKey[key] = e
	if e.ended {
		return evs
	}
	e.claims = make([]uint64, len(e.pod.IPs))
	for i := range e.claims {
		e.claims[i] = ix.claimSeq(initial)
	}
	if e.terminating() && ix.contested(e) {
		// A pod being deleted never takes an address from another.
		e.ended = true
		return evs
	}
	evs = ix.link(e, nil, evs)
	if e.served() {
		ix.resolvable++
		evs = append(evs, event{kind: eventReady, pod: e.pod})
	}
	return evs
}

// settle decides, when newcomer claims an address old already claims,
// which of the two is stale. An address is only handed out again after
// its holder released it, so the newer claim is the live one, whichever
// pod was created first: when two pods swap addresses after a node reboot,
// their statuses updated one at a time, the pod that moved first is the
// newer claimant of an address whose former holder has not reported its
// move yet. The older claimant is displaced; the address stays ambiguous
// while both claim it, and the displaced pod is served again only once it
// reports new addresses of its own.
//
// Claims from the initial list are unordered: neither is displaced and the
// address stays ambiguous until one pod moves or goes. A pod being deleted
// (old here: a newcomer being deleted never gets this far) loses at once
// and for good, so that the newcomer is served without waiting.
func (ix *index) settle(old, newcomer *entry, claim uint64, evs []event) []event {
	switch {
	case old.terminating():
		return ix.end(old, goneTaken, newcomer.pod, evs)
	case claim == 0, old.displaced:
		return evs
	}
	old.displaced = true
	ix.resolvable--
	return append(evs, event{kind: eventGone, pod: old.pod, why: goneDisplaced, by: newcomer.pod})
}

// entryFor returns the index entry for a stripped pod, or nil when the pod
// must not be indexed.
func entryFor(p *storedPod, node string) *entry {
	if p.Spec.HostNetwork ||
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
	e := &entry{pod: Pod{
		Namespace:      p.Namespace,
		Name:           p.Name,
		UID:            p.UID,
		ServiceAccount: p.Spec.ServiceAccountName,
		IPs:            ips,
	}}
	if p.DeletionTimestamp != nil {
		// The API server sets it to the time of the deletion plus the
		// grace period: the moment the kubelet kills what still runs.
		e.deadline = p.DeletionTimestamp.Time
	}
	return e
}

// podIPs parses every status.podIPs entry (falling back to status.podIP for
// objects that lack the list), unmapped and without duplicates. Unparsable
// entries are skipped: they cannot match a source address.
func podIPs(p *storedPod) []netip.Addr {
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
