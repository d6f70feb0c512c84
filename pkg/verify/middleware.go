package verify

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type contextKey struct{}

// NewContext returns a context carrying id, as Middleware passes it on.
func NewContext(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, contextKey{}, id)
}

// FromContext returns the identity Middleware verified for this request.
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(contextKey{}).(*Identity)
	return id, ok && id != nil
}

// Log keys of the middleware's refusals.
const (
	logKeyReason = "reason"
	logKeyRemote = "remote"
	logKeyError  = "error"
)

// Middleware verifies the request's bearer token (Authorization: Bearer
// <token>) and calls next with the identity in the request's context
// (FromContext). Refusals, answered per RFC 6750 with a WWW-Authenticate
// header and a short plain-text body that never repeats the token:
//
//   - no token: 401, WWW-Authenticate: Bearer realm="<realm>";
//   - a token that does not verify: 401, ... error="invalid_token";
//   - a valid token whose subject is not allowed: 403, ... error="insufficient_scope";
//   - the verifier could not decide (issuer, key set or TokenReview
//     unreachable): 503 with Retry-After (RefreshInterval, rounded up to a
//     second), so the caller retries rather than thinking its token bad.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearerToken(r)
		if !ok {
			v.refuse(w, r, newError(ErrMissing, "", nil))
			return
		}
		id, err := v.Verify(r.Context(), token)
		if err != nil {
			v.refuse(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), id)))
	})
}

// bearerToken returns the token of the request's only Authorization header
// if it uses the Bearer scheme (case-insensitive, RFC 6750 section 2.1).
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(h[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func (v *Verifier) refuse(w http.ResponseWriter, r *http.Request, err error) {
	var ve *Error
	kind := ErrMalformed
	if errors.As(err, &ve) {
		kind = ve.Kind
	}
	realm := `Bearer realm="` + v.s.Realm + `"`
	status := http.StatusUnauthorized
	switch kind {
	case ErrMissing:
		w.Header().Set("WWW-Authenticate", realm)
	case ErrUnavailable:
		status = http.StatusServiceUnavailable
		// The next key set fetch is at most one interval away.
		w.Header().Set("Retry-After", strconv.Itoa(int((v.s.RefreshInterval+time.Second-1)/time.Second)))
		v.s.Logger.WarnContext(r.Context(), "verify: cannot verify tokens", logKeyRemote, r.RemoteAddr, logKeyError, err.Error())
	case ErrSubject:
		status = http.StatusForbidden
		w.Header().Set("WWW-Authenticate", realm+`, error="insufficient_scope", error_description="`+describe(kind)+`"`)
	default:
		w.Header().Set("WWW-Authenticate", realm+`, error="invalid_token", error_description="`+describe(kind)+`"`)
	}
	if kind != ErrUnavailable {
		v.s.Logger.DebugContext(r.Context(), "verify: refused", logKeyReason, describe(kind), logKeyRemote, r.RemoteAddr, logKeyError, err.Error())
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(describe(kind) + "\n"))
}

// describe is the kind's text without the package prefix: what a caller is
// told (the detail, for the service's own logs, is not sent).
func describe(kind error) string {
	return strings.TrimPrefix(kind.Error(), "verify: ")
}
