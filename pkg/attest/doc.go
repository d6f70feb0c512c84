// Package attest asks the node's kernel which pod a TCP connection comes
// from, so that the pod informer's view of addresses (which lags the data
// plane) never decides alone.
//
// For an accepted connection from X:px to the agent's L:lp and the pod P
// (UID u) the informer names for X, an [Attester] finds a process of pod u
// from /proc/<pid>/cgroup (the kubelet names every pod's cgroup after its
// UID, with the cgroupfs and the systemd driver, on cgroup v1 and v2) and
// reads that process's network namespace's TCP table, /proc/<pid>/net/tcp
// or tcp6. It needs the host PID namespace (hostPID) and no capability:
// those files are readable by any user for any process.
//
// Guarantees:
//
//   - A pod is only ever returned for a connection that the kernel shows in
//     that pod's network namespace, as a socket from X:px to L:lp in state
//     ESTABLISHED, FIN_WAIT1 or FIN_WAIT2 (the states a client socket can be
//     in while the agent's end is open).
//   - When the informer's pod does not hold the connection, the pods on the
//     node whose namespace has X as a local address are searched; the one
//     holding it is returned ("corrected"), else the request is refused with
//     [ErrRefused], retryable. The informer's pod is never served then.
//   - A socket is attested for one connection only: a later connection
//     matching a socket already attested (a forged connection reusing a
//     victim's idle 4-tuple after resetting the agent's end) is refused.
//   - When the kernel's evidence cannot be read, [ErrUnavailable]
//     (retryable). A request whose context carries no connection (see
//     [WithConn]) is refused, never waved through.
//   - Each connection is attested once: later requests on a keep-alive
//     connection cost a comparison of pod UIDs, plus the informer's own
//     lookup (a pod deleted since is never served).
//   - Memory: one cache entry per pod the informer knows (its process ID
//     and the last few attested socket inodes), rebuilt from scratch on
//     every /proc scan; a scan runs only when a pod's process is unknown or
//     gone, at most once per Config.MinRescanInterval.
//
// Container mode (Config.Containers, --attest=container) goes one step
// further, and needs CAP_SYS_PTRACE (see container.go for why exactly):
//
//   - The pod returned carries the container (Pod.Container) whose process
//     holds the connection's socket, found among that pod's processes
//     only through /proc/<pid>/fdinfo, named by the process's cgroup and
//     looked up in the pod's container statuses. A socket no process of
//     the pod holds, or a container the status does not list, is refused
//     ([ErrRefused], retryable).
//   - A connection from one of the node's own addresses, which the
//     informer refuses, is the hostNetwork pod whose container holds it;
//     only hostNetwork pods' processes are searched, and anything else
//     keeps the informer's refusal.
//   - Work per connection is bounded (at most 16,384 fdinfo files read);
//     the process list it keeps is bounded by the node's processes.
package attest
