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
	q := r.URL.Query()
	aud := q.Get("audience")
	switch {
	case len(q["audience"]) != 1 || aud == "":
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
	hdr.Set("Cache-Control", "no-store")
	if wantsText(r.Header.Get("Accept")) {
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(ans.Credentials.IDToken.Reveal() + "\n"))
		return http.StatusOK
	}
	body, _ := json.Marshal(answer{Token: ans.Credentials.IDToken.Reveal(),
		Expiration: ans.Credentials.Expiration.UTC().Truncate(time.Second).Format(time.RFC3339)})
	hdr.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return http.StatusOK
}

// wantsText reports whether the caller asks for text/plain before JSON.
func wantsText(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		switch strings.TrimSpace(strings.SplitN(part, ";", 2)[0]) {
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
