package broker

import (
	"time"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Request is what a wire surface asks for on behalf of the calling pod. It
// is comparable: the cache is keyed by (pod UID, Request), so a surface
// must canonicalise it (scopes sorted and deduplicated) or one pod could
// fill its share of the cache with spellings of one request.
type Request struct {
	Cloud exchange.Cloud
	// Want is the kind of credential (exchange.Kind).
	Want exchange.Kind
	// Identity is the identity the caller names, in its cloud's terms;
	// empty means the one its ServiceAccount is annotated with. Naming
	// another one is refused.
	Identity string
	// Scope is what the credential is for, in its cloud's terms: OAuth
	// scopes (space-separated and sorted), a resource, or the audience of
	// an identity token.
	Scope string
}

// Answer is the broker's answer to a Request.
type Answer struct {
	Pod podresolve.Pod
	// Identity is what the credentials stand for, in its cloud's terms
	// (empty for the pod's own principal where its cloud serves one).
	Identity string
	// Credentials are shared with the cache and with other callers: read,
	// never modify.
	Credentials *exchange.Credentials
}

// Class is what kind of answer a failure calls for. Each surface maps it
// to its own status codes and error format.
type Class int

const (
	// Unavailable is transient: retry soon (503 on most surfaces).
	Unavailable Class = iota + 1
	// Throttled asks the caller to slow down (429).
	Throttled
	// Refused is final for this pod until its configuration changes (403).
	Refused
	// Invalid is a request upstream or the policy cannot parse (400).
	Invalid
)

// Failure is a refused or failed request, classified once for every
// surface. Code and Message are written by the broker, never copied from
// upstream, so they hold no secret and nothing the caller sent.
type Failure struct {
	Class      Class
	Code       string
	Message    string
	RetryAfter time.Duration
}
