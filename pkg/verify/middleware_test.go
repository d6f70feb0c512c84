package verify

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMiddleware(t *testing.T) {
	is, _, v := setup(t, func(cfg *Config) {
		cfg.Realm = "orders"
	})
	var seen *Identity
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := FromContext(r.Context())
		if !ok {
			t.Error("handler called without an identity")
		}
		seen = id
		_, _ = io.WriteString(w, "hello "+id.Subject)
	}))
	good := is.rs256(t, "rsa-1")
	c := goodClaims(is.srv.URL)
	c.Expiry = jwt.NewNumericDate(t0.Add(-time.Hour))
	expired := mint(t, rsaKey, jose.RS256, "rsa-1", c)
	c = goodClaims(is.srv.URL)
	c.Subject, c.K8s.ServiceAccount.Name = "system:serviceaccount:shop:backend", "backend"
	forbidden := mint(t, rsaKey, jose.RS256, "rsa-1", c)

	for _, tc := range []struct {
		name       string
		header     []string // Authorization values
		wantStatus int
		wantAuth   string // WWW-Authenticate
		token      string // must not appear in the answer
	}{
		{"valid", []string{"Bearer " + good}, 200, "", good},
		{"valid, lower-case scheme", []string{"bearer " + good}, 200, "", good},
		{"no header", nil, 401, `Bearer realm="orders"`, ""},
		{"basic scheme", []string{"Basic dXNlcjpwYXNz"}, 401, `Bearer realm="orders"`, ""},
		{"empty bearer", []string{"Bearer "}, 401, `Bearer realm="orders"`, ""},
		{"two headers", []string{"Bearer " + good, "Bearer " + good}, 401, `Bearer realm="orders"`, good},
		{"expired", []string{"Bearer " + expired}, 401, `Bearer realm="orders", error="invalid_token", error_description="token expired"`, expired},
		{"garbage", []string{"Bearer abc.def.ghi"}, 401, `Bearer realm="orders", error="invalid_token", error_description="malformed token"`, ""},
		{"subject not allowed", []string{"Bearer " + forbidden}, 403, `Bearer realm="orders", error="insufficient_scope", error_description="subject not allowed"`, forbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen = nil
			req := httptest.NewRequest(http.MethodGet, "/orders", nil)
			for _, h := range tc.header {
				req.Header.Add("Authorization", h)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, tc.wantStatus, rec.Body.String())
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tc.wantAuth {
				t.Fatalf("WWW-Authenticate %q, want %q", got, tc.wantAuth)
			}
			if tc.wantStatus == 200 {
				if seen == nil || seen.PodUID != "pod-uid" || rec.Body.String() != "hello "+testSubject {
					t.Fatalf("identity %+v, body %q", seen, rec.Body.String())
				}
				return
			}
			if seen != nil {
				t.Fatal("handler was called")
			}
			if tc.token != "" {
				var all strings.Builder
				all.WriteString(rec.Body.String())
				for k, vs := range rec.Header() {
					all.WriteString(k + strings.Join(vs, ""))
				}
				if strings.Contains(all.String(), tc.token) {
					t.Fatal("the answer contains the token")
				}
			}
		})
	}
}

// TestMiddlewareUnavailable: when the key set cannot be had, the caller
// gets a retryable 503, not a 401 that blames its token.
func TestMiddlewareUnavailable(t *testing.T) {
	is := newIssuer(t)
	is.setFail(true)
	v := newVerifier(t, is.config(clocktesting.NewFakePassiveClock(t0)))
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("handler called") }))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer "+is.rs256(t, "rsa-1"))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "10" {
		t.Fatalf("status %d, Retry-After %q; want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
}

func TestFromContextEmpty(t *testing.T) {
	if id, ok := FromContext(httptest.NewRequest(http.MethodGet, "/", nil).Context()); ok || id != nil {
		t.Fatalf("FromContext on a bare context = %v, %v", id, ok)
	}
}
