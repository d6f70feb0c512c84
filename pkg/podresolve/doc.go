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
//   - A pod is live while it has at least one IP, is not host-network, is not
//     being deleted and is neither Succeeded nor Failed. Any other pod is out
//     of the index, and so is a deleted pod (tombstones included).
//   - When two pods claim one address, the pod created earlier (or, on a
//     creationTimestamp tie, the one whose claim was seen first) is displaced:
//     its address was reused, so the pod itself is gone. A displaced pod is
//     never returned again, for any of its addresses; it still counts as a
//     claimant, so the address stays ambiguous until its object goes.
//   - Host-network pods are never indexed. An address of the node itself
//     (including loopback) gives [ErrHostAddress], since every host-network
//     process shares it.
//   - Before the informer has synced and the initial list has been indexed,
//     Resolve gives [ErrNotSynced] and HasSynced is false.
//   - [Listener]s hear PodReady when a pod becomes resolvable or its IPs
//     change, and PodGone when it stops being resolvable (deleted, terminal,
//     being deleted, IPs changed, or displaced). PodGone is only ever sent
//     for a pod that got PodReady before.
package podresolve
