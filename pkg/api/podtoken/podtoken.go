// Package podtoken serves a pod its own ServiceAccount token for another
// service's audience (GET /v1/token?audience=...), so that service A can
// prove its identity to service B without mounting a projected token per
// audience. B checks the token with pkg/verify.
//
// The token is pod-bound (it dies with the pod), short-lived and cached
// and refreshed by the broker like any credential; which audiences a pod
// may ask for is the broker's policy (the ServiceAccount's annotation, the
// cluster's prefix and patterns), over this package's description of the
// cloud (BrokerCloud): never a cloud exchange's audience nor the API
// server's, under any spelling their receivers accept, and no prefix that
// covers one (CheckPrefix).
package podtoken

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/agent/pkg/api/internal/wire"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/guard"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Path is where pods ask for tokens.
const Path = "/v1/token"

// Cloud is the broker cloud name of service-to-service tokens.
const Cloud exchange.Cloud = "kubernetes"

// MaxAudienceLen bounds the audience a caller may name.
const MaxAudienceLen = 512

// Broker is what the surface needs of the broker.
type Broker interface {
	Credentials(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, error)
	LogFailure(ctx context.Context, addr netip.Addr, pod podresolve.Pod, f broker.Failure, err error)
	ObserveRequest(code int, d time.Duration)
}

// Handler serves Path.
type Handler struct{ broker Broker }

// New returns the surface over b.
func New(b Broker) *Handler { return &Handler{broker: b} }

// answer is the JSON answer: the token and when it expires (RFC 3339 UTC).
type answer struct {
	Token      string `json:"token"`
	Expiration string `json:"expiration"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ServeHTTP answers GET Path?audience=A, as JSON or, with Accept:
// text/plain, as the bare token for shell use.
//
// SECURITY: the caller's identity comes from r.RemoteAddr only.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	code := h.serve(w, r)
	h.broker.ObserveRequest(code, time.Since(start))
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	if r.URL.Path != Path || r.URL.RawPath != "" {
		return WriteError(w, http.StatusNotFound, "NotFound", "no such path; tokens are served at "+Path+"?audience=...", 0)
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		return WriteError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "only GET is supported", 0)
	}
	aud, n, ok := literalAudience(r.URL.RawQuery)
	if !ok {
		q := r.URL.Query()
		aud, n = q.Get("audience"), len(q["audience"])
	}
	switch {
	case n != 1 || aud == "":
		return WriteError(w, http.StatusBadRequest, "BadRequest", "name exactly one audience: ?audience=...", 0)
	case len(aud) > MaxAudienceLen || strings.ContainsFunc(aud, func(c rune) bool { return c <= ' ' || c > '~' }):
		return WriteError(w, http.StatusBadRequest, "BadRequest", "the audience must be printable ASCII without spaces, at most 512 bytes", 0)
	}
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return WriteError(w, http.StatusBadRequest, "BadRequest", "the caller's address could not be read", 0)
	}
	addr := peer.Addr().Unmap()
	ans, err := h.broker.Credentials(r.Context(), addr, broker.Request{Cloud: Cloud, Want: exchange.KindIDToken, Scope: aud})
	if err != nil {
		f := broker.Classify(err)
		h.broker.LogFailure(r.Context(), addr, ans.Pod, f, err)
		return WriteError(w, status(f.Class), f.Code, f.Message, f.RetryAfter)
	}
	hdr := w.Header()
	hdr["Cache-Control"] = noStore
	buf := bodyPool.Get().(*[]byte)
	body := (*buf)[:0]
	if wantsText(r.Header.Get("Accept")) {
		hdr["Content-Type"] = contentTypeText
		body = append(append(body, ans.Credentials.IDToken.Reveal()...), '\n')
	} else {
		// What json.Marshal makes of an answer, without its allocations.
		body = append(body, `{"token":`...)
		body = wire.AppendJSONString(body, ans.Credentials.IDToken.Reveal())
		body = append(body, `,"expiration":"`...)
		body = ans.Credentials.Expiration.UTC().Truncate(time.Second).AppendFormat(body, time.RFC3339)
		body = append(body, `"}`...)
		hdr["Content-Type"] = contentTypeJSON
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	clear(body) // the token
	*buf = body
	bodyPool.Put(buf)
	return http.StatusOK
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// Header values shared by every answer: net/http only reads them.
var (
	noStore         = []string{"no-store"}
	contentTypeJSON = []string{"application/json"}
	contentTypeText = []string{"text/plain; charset=utf-8"}
)

// literalAudience returns what r.URL.Query() would give for "audience" (its
// first value and how many there are) when nothing in the query is escaped
// and the query is short, without allocating; ok is false otherwise, for
// url.ParseQuery to decide.
func literalAudience(raw string) (first string, n int, ok bool) {
	if strings.ContainsAny(raw, "%+;") || strings.Count(raw, "&") >= 100 {
		return "", 0, false
	}
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if k, v, _ := strings.Cut(pair, "="); k == "audience" {
			if n == 0 {
				first = v
			}
			n++
		}
	}
	return first, n, true
}

// wantsText reports whether the caller asks for text/plain before JSON.
func wantsText(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		media, _, _ := strings.Cut(part, ";")
		switch strings.TrimSpace(media) {
		case "text/plain":
			return true
		case "application/json", "*/*":
			return false
		}
	}
	return false
}

func status(c broker.Class) int {
	switch c {
	case broker.Refused:
		return http.StatusForbidden
	case broker.Throttled:
		return http.StatusTooManyRequests
	case broker.Invalid:
		return http.StatusBadRequest
	default:
		return http.StatusServiceUnavailable
	}
}

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
