// Package podresolve tells which pod on this node owns a source IP address.
//
// A [Resolver] runs one pod informer limited to its node (field selector
// spec.nodeName). A transform strips every pod to the few fields used here
// before the informer stores it, so the informer's memory per pod stays
// small. Every status.podIPs entry (IPv4 and IPv6) of every live pod is
// indexed.
//
// Guarantees:
//
//   - Resolve never guesses. It returns a pod only when exactly one live pod
//     claims the address. Zero claimants (after a bounded, event-driven wait
//     for a just-created pod) give [ErrNotFound]; more than one give
//     [ErrAmbiguous]. Both are retryable.
//   - A pod is live while it has at least one IP, is not host-network and is
//     neither Succeeded nor Failed. A pod being deleted stays live until its
//     deletionTimestamp (the end of its grace period) on Config.Clock, so
//     that it gets its own credentials in its last seconds, but only while
//     no other pod claims any of its addresses: a pod being deleted never
//     takes an address from another, and loses its own at once and for good
//     to any pod that claims it. Any other pod is out of the index, and so
//     is a deleted pod (tombstones included).
//   - When two live pods claim one address, the newer claim wins: the pod
//     with the older claim is displaced, whichever pod was
//     created first, since an address is only handed out again once its
//     holder released it (two pods swapping addresses, their statuses
//     written one at a time, each hold the address they moved to). The
//     address stays ambiguous while both claim it. A displaced pod is not
//     returned for any of its addresses until it reports an address it did
//     not have (or drops the contested one); it still counts as a
//     claimant. Claims seen in the initial list are unordered: such a
//     contest displaces nobody and the address stays ambiguous until one
//     pod moves or goes.
//   - Host-network pods are never indexed. An address of the node itself
//     (including loopback) gives [ErrHostAddress], since every host-network
//     process shares it.
//   - Before the informer has synced and the initial list has been indexed,
//     Resolve gives [ErrNotSynced] and HasSynced is false.
//   - [Listener]s hear PodReady when a pod becomes resolvable or its IPs
//     change, and PodGone when it stops being resolvable (deleted, terminal,
//     its grace period over, its address taken while being deleted, IPs
//     changed, or displaced). PodGone is only ever sent for a pod that got
//     PodReady before. A pod's deletion starting is no event:
//     listeners keep what they hold for it until PodGone.
package podresolve
