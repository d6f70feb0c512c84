package broker

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Refusal is a request the broker turns down by policy. Code and Message go
// to the caller verbatim, so they must never carry a secret; they name the
// pod, the ServiceAccount or the annotation so that the workload's owner can
// fix the cause without reading the agent's logs.
type Refusal struct {
	Code    string
	Message string
}

func (r *Refusal) Error() string { return r.Code + ": " + r.Message }

// Refusal codes. They are part of the API: callers and dashboards match on them.
const (
	CodeHostNetwork           = "HostNetworkNotSupported"
	CodeDefaultServiceAccount = "DefaultServiceAccount"
	CodeNoRole                = "NoRoleAnnotation"
	CodeRoleNotAllowed        = "RoleNotAllowed"
	CodeServiceAccountMissing = "ServiceAccountNotFound"
	CodeTokenRequestRefused   = "TokenRequestRefused"
	CodeUpstreamDenied        = "AccessDenied"
	CodeInvalidRole           = "InvalidRole"
	CodePodNotIdentified      = "PodNotIdentified"
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

// errKubeAPI is a Kubernetes API failure (TokenRequest or ServiceAccount GET).
type errKubeAPI struct {
	throttled bool
	err       error
}

func (e *errKubeAPI) Error() string { return fmt.Sprintf("kubernetes API: %v", e.err) }
func (e *errKubeAPI) Unwrap() error { return e.err }

// failure is what the caller is told, derived from an error in one place.
type failure struct {
	status     int
	code       string
	message    string
	retryAfter time.Duration
}

// classify maps every error the request path can produce to the HTTP answer.
// It is the only place that decides status codes. Messages are written here,
// not taken from upstream, so that no upstream text (which might echo a
// token) reaches a pod.
func classify(err error) failure {
	var refusal *Refusal
	var xe *exchange.Error
	var te *errKubeAPI
	var pd *provisionalDenial
	switch {
	case errors.As(err, &pd) && errors.As(err, &refusal):
		return failure{status: http.StatusServiceUnavailable, code: refusal.Code, retryAfter: 2 * time.Second,
			message: refusal.Message + "; retrying for a while (a restarting API server refuses briefly), then this becomes final"}
	case errors.As(err, &pd):
		code := CodeUpstreamDenied
		if errors.As(err, &xe) && xe.Code != "" {
			code = xe.Code
		}
		return failure{status: http.StatusServiceUnavailable, code: CodeUpstreamDenied, retryAfter: 2 * time.Second,
			message: "the identity provider refused this pod's ServiceAccount for the role (" + code + "); retrying for a while in case the role or its trust policy was just created, then this becomes final: check the role's trust policy"}
	case errors.As(err, &refusal):
		return failure{status: http.StatusForbidden, code: refusal.Code, message: refusal.Message}
	case errors.Is(err, podresolve.ErrHostAddress):
		return failure{status: http.StatusForbidden, code: CodeHostNetwork,
			message: "the caller's address belongs to the node: host-network pods and node processes share it, so they cannot be identified and get no credentials"}
	case errors.Is(err, podresolve.ErrNotSynced):
		return failure{status: http.StatusServiceUnavailable, code: CodeUnavailable, retryAfter: time.Second,
			message: "the agent is starting and has not listed this node's pods yet"}
	case errors.Is(err, podresolve.ErrAmbiguous):
		return failure{status: http.StatusServiceUnavailable, code: CodePodNotIdentified, retryAfter: time.Second,
			message: "more than one pod on this node claims the caller's address; retry once the old pod is gone"}
	case errors.Is(err, podresolve.ErrNotFound):
		return failure{status: http.StatusServiceUnavailable, code: CodePodNotIdentified, retryAfter: time.Second,
			message: "no running pod on this node has the caller's address (yet)"}
	case errors.Is(err, errPodGone):
		return failure{status: http.StatusServiceUnavailable, code: CodePodNotIdentified, retryAfter: time.Second,
			message: "the API server says the pod that had the caller's address no longer exists; a new pod at this address is served once the agent sees it"}
	case errors.Is(err, errServiceAccountMissing):
		return failure{status: http.StatusServiceUnavailable, code: CodeServiceAccountMissing, retryAfter: 2 * time.Second,
			message: "the pod's ServiceAccount does not exist (being replaced, or deleted); retry later"}
	case errors.Is(err, errServiceAccountsNotSynced):
		return failure{status: http.StatusServiceUnavailable, code: CodeUnavailable, retryAfter: time.Second,
			message: "the agent is starting and has not listed ServiceAccounts yet"}
	case errors.Is(err, errPodFetchLimited):
		return failure{status: http.StatusTooManyRequests, code: CodeThrottled, retryAfter: 5 * time.Second,
			message: "this pod has caused too many credential fetches recently; retry later"}
	case errors.As(err, &xe):
		switch xe.Kind {
		case exchange.Denied, exchange.InvalidToken:
			return failure{status: http.StatusForbidden, code: CodeUpstreamDenied,
				message: "the identity provider refused this pod's ServiceAccount for the role (" + xe.Code + "); check the role's trust policy"}
		case exchange.InvalidRequest:
			return failure{status: http.StatusBadRequest, code: CodeInvalidRole,
				message: "the identity provider rejected the request for this role (" + xe.Code + "); check the role annotation"}
		case exchange.Throttled:
			return failure{status: http.StatusTooManyRequests, code: CodeThrottled, retryAfter: 2 * time.Second,
				message: "the identity provider is throttling requests; retry later"}
		default:
			return failure{status: http.StatusServiceUnavailable, code: CodeUnavailable, retryAfter: time.Second,
				message: "the identity provider is unavailable; retry later"}
		}
	case errors.As(err, &te) && te.throttled, errors.Is(err, errUpstreamBusy):
		return failure{status: http.StatusTooManyRequests, code: CodeThrottled, retryAfter: time.Second,
			message: "the agent is rate limiting upstream calls; retry later"}
	case errors.As(err, &te):
		return failure{status: http.StatusServiceUnavailable, code: CodeUnavailable, retryAfter: time.Second,
			message: "the Kubernetes API is unavailable to the agent; retry later"}
	case errors.Is(err, errStillFetching):
		return failure{status: http.StatusServiceUnavailable, code: CodeUnavailable, retryAfter: time.Second,
			message: "credentials for this pod are being fetched; retry shortly"}
	default:
		return failure{status: http.StatusServiceUnavailable, code: CodeUnavailable, retryAfter: time.Second,
			message: "the agent could not get credentials for this pod; retry later"}
	}
}

func retryAfterSeconds(d time.Duration) string {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.Itoa(s)
}
