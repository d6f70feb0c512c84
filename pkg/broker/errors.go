package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/credbroker/agent/pkg/attest"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Refusal is a request the broker turns down by policy. Code and Message go
// to the caller verbatim, so they must never carry a secret; they name the
// pod, the ServiceAccount or the annotation so that the workload's owner can
// fix the cause without reading the agent's logs. A cloud's own policy
// (Cloud.Check) refuses with the same type.
type Refusal = exchange.Refusal

// Refusal codes. They are part of the API: callers and dashboards match on them.
const (
	CodeHostNetwork           = "HostNetworkNotSupported"
	CodeDefaultServiceAccount = "DefaultServiceAccount"
	CodeNoRole                = exchange.CodeNoIdentity
	CodeRoleNotAllowed        = "RoleNotAllowed"
	CodeIdentityNotAllowed    = "IdentityNotAllowed"
	CodeCloudNotServed        = "CloudNotServed"
	CodeAudienceNotAllowed    = exchange.CodeAudienceNotAllowed
	CodeServiceAccountMissing = "ServiceAccountNotFound"
	CodeTokenRequestRefused   = "TokenRequestRefused"
	CodeUpstreamDenied        = "AccessDenied"
	CodeInvalidRole           = "InvalidRole"
	CodeAudienceRefused       = "AudienceRefused"
	CodeLifetimeRefused       = "LifetimeRefused"
	CodePodNotIdentified      = "PodNotIdentified"
	CodeImageNotAllowed       = "ImageNotAllowed"
	CodeEphemeralNotAllowed   = "EphemeralContainerNotAllowed"
	CodeUnavailable           = "ServiceUnavailable"
	CodeThrottled             = "Throttled"
	CodeNotFound              = "NotFound"
	CodeMethodNotAllowed      = "MethodNotAllowed"
	CodeBadRequest            = "BadRequest"
)

// errUpstreamBusy means the broker's own upstream rate limit would have made
// the caller wait past its deadline.
var errUpstreamBusy = errors.New("broker: upstream rate limit reached")

// errStillFetching means the caller's deadline passed while its credentials
// were still being fetched; the fetch goes on and a retry will likely hit
// the cache.
var errStillFetching = errors.New("broker: credentials are still being fetched")

// errPodGone means the API server no longer knows the pod the token was to
// be bound to (NotFound, or Conflict: another pod now has its name): it was
// deleted, whatever our informer still shows.
var errPodGone = errors.New("broker: pod no longer exists")

// errServiceAccountMissing means the ServiceAccount a live pod runs as does
// not exist: it is being replaced, or was deleted.
var errServiceAccountMissing = errors.New("broker: ServiceAccount does not exist")

// errServiceAccountsNotSynced means the ServiceAccount watch has not listed
// yet.
var errServiceAccountsNotSynced = errors.New("broker: ServiceAccounts not listed yet")

// errPodFetchLimited means one pod's requests caused more fetches than its
// budget allows.
var errPodFetchLimited = errors.New("broker: this pod's fetch budget is spent")

// provisionalDenial is an upstream denial inside deniedRetryWindow: it may
// be IAM's eventual consistency, so callers are told to retry.
type provisionalDenial struct{ err error }

func (e *provisionalDenial) Error() string { return "provisional: " + e.err.Error() }
func (e *provisionalDenial) Unwrap() error { return e.err }

// cloudFailure carries, with an exchange's failure, its cloud's words for
// what to fix (Cloud.TrustHint and Cloud.AudienceHint).
type cloudFailure struct {
	trust, audience string
	err             error
}

func (e *cloudFailure) Error() string { return e.err.Error() }
func (e *cloudFailure) Unwrap() error { return e.err }

// trustMessage tells the pod to check the identity's trust, in its
// cloud's words when err carries them.
func trustMessage(err error) string {
	msg := "check the identity's trust policy"
	if cf := (*cloudFailure)(nil); errors.As(err, &cf) && cf.trust != "" {
		msg += " (" + cf.trust + ")"
	}
	return msg
}

// errKubeAPI is a Kubernetes API failure (TokenRequest or ServiceAccount GET).
type errKubeAPI struct {
	throttled bool
	err       error
}

func (e *errKubeAPI) Error() string { return fmt.Sprintf("kubernetes API: %v", e.err) }
func (e *errKubeAPI) Unwrap() error { return e.err }

// Classify maps every error Credentials and Identity return to what the
// caller is told. It is the one place that decides what kind of answer an
// error calls for; each surface maps the Class to its own status codes.
// Messages are written here, not taken from upstream, so that no upstream
// text (which might echo a token) reaches a pod.
func Classify(err error) Failure {
	var refusal *Refusal
	var xe *exchange.Error
	var te *errKubeAPI
	var pd *provisionalDenial
	switch {
	case errors.As(err, &pd) && errors.As(err, &refusal):
		return Failure{Class: Unavailable, Code: refusal.Code, RetryAfter: 2 * time.Second,
			Message: refusal.Message + "; retrying for a while (a restarting API server refuses briefly), then this becomes final"}
	case errors.As(err, &pd):
		code := CodeUpstreamDenied
		if errors.As(err, &xe) && xe.Code != "" {
			code = xe.Code
		}
		if xe != nil && xe.Cause == exchange.CauseAudience {
			return Failure{Class: Unavailable, Code: CodeAudienceRefused, RetryAfter: 2 * time.Second,
				Message: audienceMessage(err, xe) + "; retrying for a while in case the provider was just configured, then this becomes final"}
		}
		return Failure{Class: Unavailable, Code: CodeUpstreamDenied, RetryAfter: 2 * time.Second,
			Message: withHint("the identity provider refused this pod's ServiceAccount for the identity ("+code+"); retrying for a while in case the identity or its trust policy was just created, then this becomes final: "+trustMessage(err), xe)}
	case errors.As(err, &refusal):
		return Failure{Class: Refused, Code: refusal.Code, Message: refusal.Message}
	case errors.Is(err, attest.ErrRefused):
		return Failure{Class: Unavailable, Code: CodePodNotIdentified, RetryAfter: time.Second,
			Message: "the node's kernel does not place this connection in the network namespace of the pod that has the caller's address (or of any pod on this node); retry once the agent's view of the node's pods catches up"}
	case errors.Is(err, attest.ErrUnavailable):
		return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
			Message: "the agent could not read the node's kernel evidence of which pod this connection comes from; retry later"}
	case errors.Is(err, podresolve.ErrHostAddress):
		return Failure{Class: Refused, Code: CodeHostNetwork,
			Message: "the caller's address belongs to the node: host-network pods and node processes share it, so they cannot be identified and get no credentials"}
	case errors.Is(err, podresolve.ErrNotSynced):
		return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
			Message: "the agent is starting and has not listed this node's pods yet"}
	case errors.Is(err, podresolve.ErrAmbiguous):
		return Failure{Class: Unavailable, Code: CodePodNotIdentified, RetryAfter: time.Second,
			Message: "more than one pod on this node claims the caller's address; retry once the old pod is gone"}
	case errors.Is(err, podresolve.ErrNotFound):
		return Failure{Class: Unavailable, Code: CodePodNotIdentified, RetryAfter: time.Second,
			Message: "no running pod on this node has the caller's address (yet)"}
	case errors.Is(err, errPodGone):
		return Failure{Class: Unavailable, Code: CodePodNotIdentified, RetryAfter: time.Second,
			Message: "the API server says the pod that had the caller's address no longer exists; a new pod at this address is served once the agent sees it"}
	case errors.Is(err, errServiceAccountMissing):
		return Failure{Class: Unavailable, Code: CodeServiceAccountMissing, RetryAfter: 2 * time.Second,
			Message: "the pod's ServiceAccount does not exist (being replaced, or deleted); retry later"}
	case errors.Is(err, errServiceAccountsNotSynced):
		return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
			Message: "the agent is starting and has not listed ServiceAccounts yet"}
	case errors.Is(err, errPodFetchLimited):
		return Failure{Class: Throttled, Code: CodeThrottled, RetryAfter: 5 * time.Second,
			Message: "this pod has caused too many credential fetches recently; retry later"}
	case errors.As(err, &xe):
		switch {
		case xe.Cause == exchange.CauseAudience && !xe.Retryable():
			return Failure{Class: Refused, Code: CodeAudienceRefused, Message: audienceMessage(err, xe)}
		case xe.Cause == exchange.CauseLifetime && !xe.Retryable():
			return Failure{Class: Invalid, Code: CodeLifetimeRefused,
				Message: withHint("the identity provider refused the credential lifetime the agent asked for ("+xe.Code+"); the identity annotation is not the cause: the agent's lifetime setting for this cloud is", xe)}
		case xe.Cause == exchange.CauseIdentityForm && xe.Kind == exchange.InvalidRequest:
			return Failure{Class: Invalid, Code: CodeInvalidRole,
				Message: withHint("the identity the ServiceAccount's annotation names is not of a form the agent sends to the identity provider, so no provider was asked; check the identity annotation", xe)}
		}
		switch xe.Kind {
		case exchange.Denied, exchange.InvalidToken:
			return Failure{Class: Refused, Code: CodeUpstreamDenied,
				Message: withHint("the identity provider refused this pod's ServiceAccount for the identity ("+xe.Code+"); "+trustMessage(err), xe)}
		case exchange.InvalidRequest:
			return Failure{Class: Invalid, Code: CodeInvalidRole,
				Message: withHint("the identity provider rejected the request for this identity ("+xe.Code+"); check the identity annotation", xe)}
		case exchange.Throttled:
			return Failure{Class: Throttled, Code: CodeThrottled, RetryAfter: 2 * time.Second,
				Message: "the identity provider is throttling requests; retry later"}
		default:
			return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
				Message: "the identity provider is unavailable; retry later"}
		}
	case errors.As(err, &te) && te.throttled, errors.Is(err, errUpstreamBusy):
		return Failure{Class: Throttled, Code: CodeThrottled, RetryAfter: time.Second,
			Message: "the agent is rate limiting upstream calls; retry later"}
	case errors.As(err, &te):
		return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
			Message: "the Kubernetes API is unavailable to the agent; retry later"}
	case errors.Is(err, errStillFetching):
		return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
			Message: "credentials for this pod are being fetched; retry shortly"}
	default:
		return Failure{Class: Unavailable, Code: CodeUnavailable, RetryAfter: time.Second,
			Message: "the agent could not get credentials for this pod; retry later"}
	}
}

// withHint appends the exchanger's own hint, if any, to a message. Hints
// are the exchanger's words (never an upstream text) and name no secret.
func withHint(msg string, xe *exchange.Error) string {
	if xe == nil || xe.Hint == "" {
		return msg
	}
	return msg + ": " + xe.Hint
}

// audienceMessage tells the pod that the token's audience, an agent
// setting, was refused: the identity annotation is not the cause.
func audienceMessage(err error, xe *exchange.Error) string {
	// Without its cloud's words (an error classified outside a fetch), the
	// agent's first audience setting, --audience, and the others alike.
	setting := "the agent's token audience for this cloud (--audience, or the cloud's own audience setting)"
	if cf := (*cloudFailure)(nil); errors.As(err, &cf) && cf.audience != "" {
		setting = "the agent's token audience for this cloud (" + cf.audience + ")"
	}
	return withHint("the identity provider refused the audience of the ServiceAccount token the agent sends ("+xe.Code+"); the identity annotation is not the cause: "+setting+" must be one the provider accepts", xe)
}
