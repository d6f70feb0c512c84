package broker

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/credbroker/agent/pkg/podresolve"
)

// CredentialsPath is where every AWS SDK is pointed by
// AWS_CONTAINER_CREDENTIALS_FULL_URI.
const CredentialsPath = "/v1/credentials"

// Pre-built header values: assigning them directly to the header map keeps
// the cache-hit path free of allocations.
var (
	contentTypeJSON = []string{"application/json"}
	noStore         = []string{"no-store"}
	allowGet        = []string{"GET, HEAD"}
)

// ServeHTTP answers the container-credentials API.
//
// SECURITY: the caller's identity comes from r.RemoteAddr only, the address
// of the TCP peer. X-Forwarded-For, Forwarded, X-Real-IP, the query string
// and the Authorization header never influence whose credentials are served.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := b.clock.Now()
	code := b.serve(w, r)
	b.metrics.observeRequest(code, b.clock.Since(start))
}

func (b *Broker) serve(w http.ResponseWriter, r *http.Request) int {
	// Only the exact bytes of CredentialsPath: URL.Path is the decoded path,
	// so "/v1%2Fcredentials" would match it; RawPath is set whenever the
	// request spelled the path with escapes. No SDK escapes this path, and a
	// single spelling keeps the agent's idea of "the credentials URL" equal to
	// that of any proxy or filter in front of it.
	if r.URL.Path != CredentialsPath || r.URL.RawPath != "" {
		return writeError(w, failure{status: http.StatusNotFound, code: CodeNotFound,
			message: "no such path; credentials are served at " + CredentialsPath})
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = allowGet
		return writeError(w, failure{status: http.StatusMethodNotAllowed, code: CodeMethodNotAllowed,
			message: "only GET is supported"})
	}
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return writeError(w, failure{status: http.StatusBadRequest, code: CodeBadRequest,
			message: "the caller's address could not be read"})
	}
	body, pod, err := b.credentials(r.Context(), peer.Addr().Unmap())
	if err != nil {
		f := classify(err)
		b.logFailure(r, peer.Addr(), pod, f, err)
		return writeError(w, f)
	}
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	h["Cache-Control"] = noStore
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return http.StatusOK
}

// LogKeyRemoteAddr is the log attribute holding the caller's address on
// every per-request line. The agent limits such lines per address with
// guard.LogLimiter, which looks for exactly this key.
const LogKeyRemoteAddr = "remote_addr"

// logFailure writes one line per refused or failed request; the logger the
// agent passes in caps them per caller address (LogKeyRemoteAddr), so a pod
// hammering with a refused identity cannot flood the node's logs. The error may
// name the pod, role and upstream error code; it never holds a secret
// (tokens and keys are exchange.Secret values, which redact themselves).
func (b *Broker) logFailure(r *http.Request, addr netip.Addr, pod podresolve.Pod, f failure, err error) {
	level := slog.LevelWarn
	var refusal *Refusal
	if f.status == http.StatusForbidden || errors.As(err, &refusal) {
		level = slog.LevelInfo
	}
	if !b.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String(LogKeyRemoteAddr, addr.String()),
		slog.Int("status", f.status),
		slog.String("reason", f.code),
		slog.String("error", err.Error()),
	}
	if pod.UID != "" {
		attrs = append(attrs, slog.String("namespace", pod.Namespace), slog.String("pod", pod.Name),
			slog.String("serviceaccount", pod.ServiceAccount))
	}
	b.log.LogAttrs(r.Context(), level, "credentials request refused", attrs...)
}

type errorBody struct {
	// Go and Java SDKs read the lower-case pair, the JavaScript SDK the
	// capitalised one.
	LowerCode    string `json:"code"`
	LowerMessage string `json:"message"`
	Code         string `json:"Code"`
	Message      string `json:"Message"`
}

func writeError(w http.ResponseWriter, f failure) int {
	return WriteError(w, f.status, f.code, f.message, f.retryAfter)
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
		h.Set("Retry-After", retryAfterSeconds(retryAfter))
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return status
}
