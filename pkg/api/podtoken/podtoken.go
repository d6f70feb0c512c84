// Package podtoken serves a pod its own ServiceAccount token for another
// service's audience (GET /v1/token?audience=...), so that service A can
// prove its identity to service B without mounting a projected token per
// audience. B checks the token with pkg/verify.
//
// The token is pod-bound (it dies with the pod), short-lived and cached
// and refreshed by the broker like any credential; which audiences a pod
// may ask for is the policy of the cloud's description (package
// pkg/exchange/podtoken): never a cloud exchange's audience nor the API
// server's, under any spelling their receivers accept, and no prefix that
// covers one.
package podtoken

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/api/internal/surface"
	"github.com/credbroker/agent/pkg/api/internal/wire"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	xpodtoken "github.com/credbroker/agent/pkg/exchange/podtoken"
	"github.com/credbroker/agent/pkg/guard"
)

// Path is where pods ask for tokens.
const Path = "/v1/token"

// Cloud is the broker cloud name of service-to-service tokens.
const Cloud = xpodtoken.Cloud

// MaxAudienceLen bounds the audience a caller may name.
const MaxAudienceLen = 512

// Name is the surface's value of the request metrics' surface label.
const Name = "podtoken"

// Broker is what the surface needs of the broker.
type Broker = surface.Broker

// Handler serves Path, as JSON or, with Accept: text/plain, as the bare
// token for shell use.
//
// SECURITY: the caller's identity comes from r.RemoteAddr only.
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

// Owns reports whether the surface answers path p.
func Owns(p string) bool { return p == Path }

// answer is the JSON answer's shape: the token and when it expires (RFC
// 3339 UTC). The surface writes it by hand, without allocating.
type answer struct {
	Token      string `json:"token"`
	Expiration string `json:"expiration"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	if r.URL.Path != Path || r.URL.RawPath != "" {
		return WriteError(w, http.StatusNotFound, "NotFound", "no such path; tokens are served at "+Path+"?audience=...", 0)
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		return WriteError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "only GET is supported", 0)
	}
	aud, n := audience(r)
	switch {
	case n != 1 || aud == "":
		return WriteError(w, http.StatusBadRequest, "BadRequest", "name exactly one audience: ?audience=...", 0)
	case len(aud) > MaxAudienceLen || strings.ContainsFunc(aud, func(c rune) bool { return c <= ' ' || c > '~' }):
		return WriteError(w, http.StatusBadRequest, "BadRequest", "the audience must be printable ASCII without spaces, at most 512 bytes", 0)
	}
	addr, ok := surface.Addr(r)
	if !ok {
		return WriteError(w, http.StatusBadRequest, "BadRequest", "the caller's address could not be read", 0)
	}
	ans, f := h.broker.Serve(r.Context(), addr, broker.Request{Cloud: Cloud, Want: exchange.KindIDToken, Scope: aud})
	if f != nil {
		return statuses.Write(w, f, WriteError)
	}
	bp := wire.Buffer()
	b := *bp
	hdr := w.Header()
	hdr["Cache-Control"] = noStore
	if wantsText(r.Header.Get("Accept")) {
		hdr["Content-Type"] = contentTypeText
		b = append(append(b, ans.Credentials.IDToken.Reveal()...), '\n')
	} else {
		hdr["Content-Type"] = contentTypeJSON
		b = append(b, `{"token":`...)
		b = wire.AppendJSONString(b, ans.Credentials.IDToken.Reveal())
		b = append(b, `,"expiration":"`...)
		b = ans.Credentials.Expiration.UTC().Truncate(time.Second).AppendFormat(b, time.RFC3339)
		b = append(b, `"}`...)
	}
	return wire.Reply(w, bp, b, false)
}

// Pre-built header values: assigning them directly to the header map keeps
// the cache-hit path free of allocations.
var (
	noStore         = []string{"no-store"}
	contentTypeText = []string{"text/plain; charset=utf-8"}
	contentTypeJSON = []string{"application/json"}
)

// audience returns the audience parameter's value and how many there are,
// as url.Values would; a query without escapes, the usual case, is read
// without allocating.
func audience(r *http.Request) (string, int) {
	q := r.URL.RawQuery
	if strings.ContainsAny(q, "%+;") {
		v := r.URL.Query()["audience"]
		if len(v) == 0 {
			return "", 0
		}
		return v[0], len(v)
	}
	var first string
	n := 0
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if k, v, _ := strings.Cut(pair, "="); k == "audience" {
			if n == 0 {
				first = v
			}
			n++
		}
	}
	return first, n
}

// wantsText reports whether the caller asks for text/plain before JSON.
func wantsText(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mediaType, _, _ := strings.Cut(part, ";")
		switch strings.TrimSpace(mediaType) {
		case "text/plain":
			return true
		case "application/json", "*/*":
			return false
		}
	}
	return false
}

// statuses are the HTTP statuses of the failure classes.
var statuses = surface.Statuses{Refused: http.StatusForbidden, Throttled: http.StatusTooManyRequests,
	Invalid: http.StatusBadRequest, Unavailable: http.StatusServiceUnavailable}

// GuardRules are this surface's rules for the request guard in front of
// it: refusals written by WriteError, and no demand for Authorization
// (--require-authorization is the AWS SDKs' opt-in; callers of this
// surface are told no header to send).
func GuardRules() guard.Rules { return guard.Rules{WriteError: WriteError} }

// WriteError answers {"code","message"} JSON with the given status, and
// Retry-After in whole seconds when retryAfter is positive; its signature
// is a guard.ErrorWriter. reason and message go to the caller verbatim:
// never a secret, never what the caller sent. It returns code.
func WriteError(w http.ResponseWriter, code int, reason, message string, retryAfter time.Duration) int {
	body, _ := json.Marshal(errorBody{Code: reason, Message: message})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		h.Set("Retry-After", wire.RetryAfterSeconds(retryAfter))
	}
	w.WriteHeader(code)
	_, _ = w.Write(body)
	return code
}
