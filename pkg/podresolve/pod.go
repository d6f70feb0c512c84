package podresolve

import (
	"errors"
	"net/netip"

	"k8s.io/apimachinery/pkg/types"
)

// Pod is the part of a pod the agent needs to decide who is calling. It is a
// value copied out of the informer's store; callers may keep it.
type Pod struct {
	Namespace      string
	Name           string
	UID            types.UID
	ServiceAccount string
	// IPs are the pod's addresses (every status.podIPs entry, IPv4-mapped
	// forms unmapped). The slice is shared by every copy handed out for
	// this pod: read it, never modify it.
	IPs []netip.Addr
	// Container is, in pkg/attest's container mode, the container whose
	// process holds the caller's connection; nil otherwise (the informer
	// never sets it). Shared like IPs: read it, never modify it.
	Container *Container
}

// Errors Resolve returns. Callers branch on them with errors.Is.
var (
	// ErrNotSynced means the informer has not completed its first list yet.
	// Retryable.
	ErrNotSynced = errors.New("podresolve: pod informer has not synced")
	// ErrNotFound means no live pod on this node owns the address, even
	// after waiting for the informer to catch up. Retryable: a pod that was
	// just created shows up shortly.
	ErrNotFound = errors.New("podresolve: no running pod on this node has this address")
	// ErrAmbiguous means more than one live pod claims the address and no
	// rule picks exactly one. Retryable: the stale pod object disappears.
	ErrAmbiguous = errors.New("podresolve: more than one pod claims this address")
	// ErrHostAddress means the address belongs to the node itself (and so to
	// every hostNetwork pod). Such callers can never be identified. Final.
	ErrHostAddress = errors.New("podresolve: address belongs to the node; host-network callers cannot be identified")
)

// Listener is told about pods entering and leaving the index. Calls happen
// on the informer's goroutine: implementations must return quickly.
type Listener interface {
	// PodReady is called when a live pod with at least one IP enters the
	// index, when it comes back (same UID: its sandbox was recreated, it
	// stopped being displaced), and when its IPs change while it stays
	// resolvable (with no PodGone before: it is the same pod).
	PodReady(Pod)
	// PodGone is called when a pod stops being resolvable: deleted,
	// terminal, at the end of its deletion grace period, left without IPs,
	// or one of its IPs claimed by another pod. (The start of a pod's
	// deletion is no event: it is served through its grace period.) It is only called for a pod that had a PodReady, and the
	// same pod may have a PodReady again later.
	PodGone(Pod)
}
