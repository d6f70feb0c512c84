// Package webhook is `agent webhook`: a mutating admission webhook that
// wires a new pod to the node agent. For a pod whose ServiceAccount names
// an identity on a cloud the agent serves, it adds that cloud's SDK
// variables (Cloud.Env) to every container, init container and native
// sidecar, so that "annotate the ServiceAccount" is the whole onboarding.
//
// Guarantees:
//
//   - It only ever adds environment variables; it never removes or
//     replaces one. A container that sets any variable of a cloud itself
//     (in env) gets none of that cloud's variables: its own wiring wins
//     as a whole.
//   - It never blocks a pod: every answer is allowed. A request it cannot
//     read (not an AdmissionReview, not a pod, larger than MaxRequestBytes)
//     is answered allowed and unmodified when its UID can be found, and
//     logged; a panic while building a patch is recovered into the same
//     answer. The webhook configuration uses failurePolicy Ignore, so an
//     unreachable webhook does not block pods either (docs/deploy.md).
//   - Nothing for pods without an identity, for the default ServiceAccount
//     (unless AllowDefaultServiceAccount, as the agent's flag of the same
//     name), for pods labelled OptOutLabel=false, or for containers named
//     in the SkipContainersAnnotation.
//   - The ServiceAccount comes from a watch of every ServiceAccount; on a
//     miss (created a moment before the pod) one live GET, bounded by what
//     is left of the admission timeout.
//   - Its serving certificate is its own (certs.go): a CA and a leaf made
//     in memory, the CA added to the MutatingWebhookConfiguration's
//     caBundle before the leaf is served, rotated before expiry.
package webhook
