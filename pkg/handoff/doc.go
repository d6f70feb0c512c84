// Package handoff carries an agent's credential cache to its successor on the
// same node during a rolling update, so that a rollout costs no TokenRequest
// and no STS call for the pods already served.
//
// The old agent listens on a UNIX socket at a node-local path (a hostPath
// directory that only the agent's UID may enter); the new one, once its pod
// informer and ServiceAccount watch have synced and before it binds its
// credential listeners, connects, reads the entries and offers each to its
// own broker (broker.Import), then takes the path over for the next rollout.
//
// Guarantees:
//   - Credentials cross the socket and nothing else: never a file, never a
//     log line, never a metric label or an error text. Logs and metrics hold
//     counts by fixed reasons only.
//   - Both ends check the other's credentials from the kernel (SO_PEERCRED):
//     a peer whose UID is not the agent's own gets nothing (the sender
//     closes without writing a byte) and gives nothing (the receiver takes
//     no entry from it). The directory's mode is a second barrier, not the
//     only one.
//   - Nothing the old agent decided is trusted: each entry is taken only if
//     the new agent, asked now, would serve it itself (the pod live in its
//     own informer with the same UID, namespace and ServiceAccount; the
//     same principal by its own policy; complete credentials of the kind
//     asked for, with more lifetime left than its refresh point). An entry
//     that fails any test is dropped on its own; the others stand.
//   - Bounded: a deadline for the whole exchange, a cap on entries, on one
//     entry's bytes and on all bytes. A stream cut short, malformed or over
//     a bound ends the reading; what was taken before stays (each entry was
//     checked on its own), the rest is fetched by the ordinary prefetch.
//   - A failed hand-off (no predecessor, a refused peer, a dead or stalled
//     one) costs the ordinary prefetch of the node's pods, nothing more: the
//     agent starts exactly as it would without one.
//
// Why the old agent listens while it serves and not only after SIGTERM: with
// maxSurge and maxUnavailable: 0 the DaemonSet controller stops the old pod
// only after the new one has been ready for minReadySeconds, and the new one
// becomes ready only once it serves, which it does after the hand-off. A
// sender that waited for SIGTERM would never be asked. The socket answers only
// the agent's own UID, which could join the agent's SO_REUSEPORT group and
// take its connections anyway (package reuseport), so listening for longer
// exposes nothing to anyone new.
//
// Wire format (version 1): frames of a 4-byte big-endian length and that many
// bytes of JSON. The first frame is a hello ({"v":1,"entries":N}), then N
// entry frames, then a frame of length 0 that marks the end.
package handoff
