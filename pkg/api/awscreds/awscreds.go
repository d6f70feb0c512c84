// Package awscreds is the AWS container-credentials surface: the endpoint
// every AWS SDK reads when AWS_CONTAINER_CREDENTIALS_FULL_URI points at the
// agent. It owns its path, its answer and error JSON and its status codes;
// whose credentials are served is the broker's business.
package awscreds

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/api/internal/surface"
	"github.com/credbroker/agent/pkg/api/internal/wire"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/guard"
)

// Path is where every AWS SDK is pointed by
// AWS_CONTAINER_CREDENTIALS_FULL_URI.
const Path = "/v1/credentials"

// Name is the surface's value of the request metrics' surface label.
const Name = "aws"

// Broker is what the surface needs of the broker.
type Broker = surface.Broker

// Handler answers the container-credentials API.
//
// SECURITY: the caller's identity comes from r.RemoteAddr only, the address
// of the TCP peer. X-Forwarded-For, Forwarded, X-Real-IP, the query string
// and the Authorization header never influence whose credentials are served.
type Handler struct {
	surface.Handler
	broker Broker
}

// New returns the surface over b; its request metrics are registered with
// reg (nil: not registered).
func New(b Broker, reg prometheus.Registerer) (*Handler, error) {
	h := &Handler{broker: b}
	var err error
	if h.Handler, err = surface.NewHandler(reg, Name, h.serve, nil); err != nil {
		return nil, err
	}
	return h, nil
}

// Owns is nil: the surface answers every path no other surface owns
// (api.Route), so that an unknown path is answered in the format of the
// surface every pod reaches.
var Owns func(path string) bool

var request = broker.Request{Cloud: exchange.AWS, Want: exchange.KindAWS}

// Pre-built header values: assigning them directly to the header map keeps
// the cache-hit path free of allocations.
var (
	contentTypeJSON = []string{"application/json"}
	noStore         = []string{"no-store"}
	allowGet        = []string{"GET, HEAD"}
)

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	// Only the exact bytes of Path: URL.Path is the decoded path, so
	// "/v1%2Fcredentials" would match it; RawPath is set whenever the
	// request spelled the path with escapes. No SDK escapes this path, and a
	// single spelling keeps the agent's idea of "the credentials URL" equal to
	// that of any proxy or filter in front of it.
	if r.URL.Path != Path || r.URL.RawPath != "" {
		return WriteError(w, http.StatusNotFound, CodeNotFound, "no such path; credentials are served at "+Path, 0)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = allowGet
		return WriteError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "only GET is supported", 0)
	}
	addr, ok := surface.Addr(r)
	if !ok {
		return WriteError(w, http.StatusBadRequest, CodeBadRequest, "the caller's address could not be read", 0)
	}
	ans, f := h.broker.Serve(r.Context(), addr, request)
	if f != nil {
		return statuses.Write(w, f, WriteError)
	}
	buf := wire.Buffer()
	body := appendCredentials(*buf, ans.Credentials)
	hdr := w.Header()
	hdr["Content-Type"] = contentTypeJSON
	hdr["Cache-Control"] = noStore
	return wire.Reply(w, buf, body, r.Method != http.MethodGet)
}

// Codes of the refusals this surface makes itself, before the broker.
const (
	CodeNotFound         = "NotFound"
	CodeMethodNotAllowed = "MethodNotAllowed"
	CodeBadRequest       = "BadRequest"
)

// statuses are the HTTP statuses of the failure classes: SDKs retry 503
// and 429 and treat 403 as final. Never 404 for a refusal: the Java SDK
// reads 404 as "no credentials endpoint".
var statuses = surface.Statuses{Refused: http.StatusForbidden, Throttled: http.StatusTooManyRequests,
	Invalid: http.StatusBadRequest, Unavailable: http.StatusServiceUnavailable}

// Status is the HTTP status of a failure class.
func Status(c broker.Class) int { return statuses.Status(c) }

// expirationLayout is RFC 3339 in UTC with a literal Z and whole seconds: the
// JavaScript SDK rejects "+00:00", and some parsers reject fractions.
const expirationLayout = "2006-01-02T15:04:05Z"

// appendCredentials renders the container-credentials answer every AWS SDK
// reads, {"AccessKeyId","SecretAccessKey","Token","Expiration","AccountId"},
// all strings. It is written by hand rather than with encoding/json because
// it runs on every cache hit: this way it allocates nothing.
func appendCredentials(b []byte, c *exchange.Credentials) []byte {
	b = append(b, `{"AccessKeyId":`...)
	b = wire.AppendJSONString(b, c.AccessKeyID)
	b = append(b, `,"SecretAccessKey":`...)
	b = wire.AppendJSONString(b, c.SecretAccessKey.Reveal())
	b = append(b, `,"Token":`...)
	b = wire.AppendJSONString(b, c.SessionToken.Reveal())
	b = append(b, `,"Expiration":"`...)
	// Truncate, never round up: a credential must not look longer-lived than it is.
	b = c.Expiration.UTC().Truncate(time.Second).AppendFormat(b, expirationLayout)
	b = append(b, '"')
	if c.AccountID != "" {
		b = append(b, `,"AccountId":`...)
		b = wire.AppendJSONString(b, c.AccountID)
	}
	return append(b, '}')
}

// GuardRules are this surface's rules for the request guard in front of
// it: refusals in this surface's error JSON and, when the operator asks
// for it (--require-authorization), an Authorization header, which every
// AWS SDK sends once the workload sets AWS_CONTAINER_AUTHORIZATION_TOKEN.
func GuardRules(requireAuthorization bool) guard.Rules {
	return guard.Rules{WriteError: WriteError, RequireAuthorization: requireAuthorization}
}

type errorBody struct {
	// Go and Java SDKs read the lower-case pair, the JavaScript SDK the
	// capitalised one.
	LowerCode    string `json:"code"`
	LowerMessage string `json:"message"`
	Code         string `json:"Code"`
	Message      string `json:"Message"`
}

// WriteError answers with the container-credentials error JSON that every
// SDK reads (both the code/message and the Code/Message pair), so that
// refusals made in front of the broker (package guard) look exactly like the
// broker's own. A positive retryAfter adds Retry-After in whole seconds
// (at least 1). code and message go to the caller verbatim: never put a
// secret or anything the caller sent into them. It returns status.
func WriteError(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) int {
	body, _ := json.Marshal(errorBody{LowerCode: code, LowerMessage: message, Code: code, Message: message})
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	h["Cache-Control"] = noStore
	if retryAfter > 0 {
		h.Set("Retry-After", wire.RetryAfterSeconds(retryAfter))
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return status
}
