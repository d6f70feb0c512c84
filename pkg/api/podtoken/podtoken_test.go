package podtoken

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

type fakeBroker struct {
	surfacetest.Entry

	requests []broker.Request
	err      error
}

func (f *fakeBroker) Credentials(_ context.Context, _ netip.Addr, req broker.Request) (broker.Answer, error) {
	f.requests = append(f.requests, req)
	if f.err != nil {
		return broker.Answer{}, f.err
	}
	return broker.Answer{Credentials: &exchange.Credentials{Kind: exchange.KindIDToken, IDToken: "eyJ.pod-token.sig",
		Expiration: time.Date(2026, 12, 2, 2, 0, 0, 500, time.UTC)}}, nil
}

func (f *fakeBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return f.Finish(f.Credentials(ctx, addr, req))
}

// handler is the surface over f, counting its answers in f.Registry().
func handler(t testing.TB, f *fakeBroker) *Handler {
	t.Helper()
	h, err := New(f, f.Registry())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func get(h http.Handler, target, accept string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.RemoteAddr = "10.0.0.1:4000"
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestServesTheTokenForTheAudience(t *testing.T) {
	f := &fakeBroker{}
	rec := get(handler(t, f), Path+"?audience=https://svc.example.com/orders", "")
	var a answer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); rec.Code != 200 || err != nil || a.Token != "eyJ.pod-token.sig" || a.Expiration != "2026-12-02T02:00:00Z" {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if want := (broker.Request{Cloud: Cloud, Want: exchange.KindIDToken, Scope: "https://svc.example.com/orders"}); f.requests[0] != want {
		t.Errorf("asked %+v, want %+v", f.requests[0], want)
	}
	rec = get(handler(t, f), Path+"?audience=svc-b", "text/plain")
	if rec.Code != 200 || rec.Body.String() != "eyJ.pod-token.sig\n" || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Errorf("text/plain answer %d %q %q", rec.Code, rec.Body, rec.Header().Get("Content-Type"))
	}
}

func TestBadRequests(t *testing.T) {
	f := &fakeBroker{}
	for target, status := range map[string]int{
		Path:                            400,
		Path + "?audience=":             400,
		Path + "?audience=a&audience=b": 400,
		Path + "?audience=a%20b":        400,
		Path + "?audience=" + strings.Repeat("a", MaxAudienceLen+1): 400,
		"/v1/token/":             404,
		"/v1%2Ftoken?audience=a": 404,
	} {
		if rec := get(handler(t, f), target, ""); rec.Code != status {
			t.Errorf("%s: %d, want %d", target, rec.Code, status)
		}
	}
	if len(f.requests) != 0 {
		t.Errorf("bad requests reached the broker: %+v", f.requests)
	}
}

func TestRefusalsKeepTheBrokersCode(t *testing.T) {
	f := &fakeBroker{err: &broker.Refusal{Code: broker.CodeAudienceNotAllowed, Message: "not listed"}}
	rec := get(handler(t, f), Path+"?audience=x", "")
	var e errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &e); rec.Code != 403 || err != nil || e.Code != broker.CodeAudienceNotAllowed {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}
	f.err = podresolve.ErrNotFound
	if rec := get(handler(t, f), Path+"?audience=x", ""); rec.Code != 503 || rec.Header().Get("Retry-After") == "" {
		t.Errorf("unidentified caller: %d %v", rec.Code, rec.Header())
	}
}

// TestCacheHitAllocatesNothing: a cached token is answered, counted and
// timed without an allocation by the surface (the broker's share is
// pkg/broker's BenchmarkCacheHit).
func TestCacheHitAllocatesNothing(t *testing.T) {
	h := handler(t, &fakeBroker{})
	h.broker = surfacetest.Hit{Answer: broker.Answer{Credentials: &exchange.Credentials{Kind: exchange.KindIDToken, IDToken: "eyJ.pod-token.sig",
		Expiration: time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)}}}
	for _, accept := range []string{"text/plain", "application/json"} {
		req := httptest.NewRequest(http.MethodGet, Path+"?audience=svc-b", nil)
		req.RemoteAddr = "10.0.0.1:4000"
		req.Header.Set("Accept", accept)
		w := surfacetest.NewDiscard()
		allocs := testing.AllocsPerRun(100, func() {
			clear(w.Header())
			h.ServeHTTP(w, req)
		})
		if w.Code != http.StatusOK || allocs > 0 {
			t.Errorf("%s: status %d, %.0f allocations per answer; want 200 and none", accept, w.Code, allocs)
		}
	}
}
