package awscreds

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// fakeBroker serves the pods in creds by address and records what it was
// asked.
type fakeBroker struct {
	surfacetest.Entry
	creds    map[netip.Addr]*exchange.Credentials
	err      error
	asked    []netip.Addr
	requests []broker.Request
}

func (f *fakeBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return f.Finish(f.Credentials(ctx, addr, req))
}

func (f *fakeBroker) Credentials(_ context.Context, addr netip.Addr, req broker.Request) (broker.Answer, error) {
	f.asked = append(f.asked, addr)
	f.requests = append(f.requests, req)
	if f.err != nil {
		return broker.Answer{}, f.err
	}
	c, ok := f.creds[addr]
	if !ok {
		return broker.Answer{}, podresolve.ErrNotFound
	}
	return broker.Answer{Credentials: c}, nil
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

var expiry = time.Date(2026, 12, 2, 1, 2, 3, 987654321, time.UTC)

func credsFor(key string) *exchange.Credentials {
	return &exchange.Credentials{Kind: exchange.KindAWS, AccessKeyID: key, SecretAccessKey: exchange.Secret("SECRET/+=" + key),
		SessionToken: exchange.Secret("TOKEN+/" + key), AccountID: "111122223333", Expiration: expiry}
}

func newFake() *fakeBroker {
	return &fakeBroker{creds: map[netip.Addr]*exchange.Credentials{
		netip.MustParseAddr("10.0.0.1"): credsFor("ASIAPODA"),
		netip.MustParseAddr("10.0.0.2"): credsFor("ASIAPODB"),
	}}
}

func do(h http.Handler, method, target, addr string, hdr http.Header) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	req.RemoteAddr = netip.AddrPortFrom(netip.MustParseAddr(addr), 40000).String()
	for k, v := range hdr {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestServesCallerContract(t *testing.T) {
	f := newFake()
	rec := do(handler(t, f), http.MethodGet, Path, "10.0.0.1", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	var got map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, rec.Body)
	}
	want := map[string]any{"AccessKeyId": "ASIAPODA", "SecretAccessKey": "SECRET/+=ASIAPODA", "Token": "TOKEN+/ASIAPODA",
		"Expiration": "2026-12-02T01:02:03Z", "AccountId": "111122223333"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v (all strings; Expiration RFC 3339 UTC with Z, truncated to the second)", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want exactly %v", got, want)
	}
	if r := f.requests[0]; r != (broker.Request{Cloud: exchange.AWS, Want: exchange.KindAWS}) {
		t.Errorf("asked the broker for %+v", r)
	}
	if got := f.Counted(t, Name); got[200] != 1 {
		t.Errorf("answers observed %v", got)
	}
}

// The hand-written encoder must agree with encoding/json on every string,
// the ones that need escaping included.
func TestRenderingMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"plain", `quote"back\slash`, "ctl\x01\n", "<html>&", "ünïcödé", "\xff invalid"} {
		c := credsFor(s)
		c.AccountID = s
		var got map[string]string
		if err := json.Unmarshal(appendCredentials(nil, c), &got); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		want, _ := json.Marshal(s)
		var wantS string
		_ = json.Unmarshal(want, &wantS)
		if got["AccessKeyId"] != wantS || got["AccountId"] != wantS {
			t.Errorf("%q rendered as %q", s, got["AccessKeyId"])
		}
	}
}

func TestIdentityComesOnlyFromTheConnection(t *testing.T) {
	f := newFake()
	hdr := http.Header{"X-Forwarded-For": {"10.0.0.2"}, "Forwarded": {"for=10.0.0.2"}, "X-Real-Ip": {"10.0.0.2"}}
	rec := do(handler(t, f), http.MethodGet, Path+"?ip=10.0.0.2", "10.0.0.1", hdr)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "ASIAPODA") {
		t.Fatalf("forwarding headers or the query changed the identity: %d %s", rec.Code, rec.Body)
	}
	if len(f.asked) != 1 || f.asked[0] != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("broker asked for %v, want the connection's address only", f.asked)
	}
}

func TestPathsAndMethods(t *testing.T) {
	f := newFake()
	h := handler(t, f)
	cases := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/", 404},
		{http.MethodGet, "/v1/credentials/", 404},
		{http.MethodGet, "/v1%2Fcredentials", 404},
		{http.MethodGet, "/latest/meta-data/iam/security-credentials/", 404},
		{http.MethodPost, Path, 405},
		{http.MethodPut, Path, 405},
		{http.MethodDelete, Path, 405},
		{http.MethodHead, Path, 200},
	}
	for _, c := range cases {
		rec := do(h, c.method, c.path, "10.0.0.1", nil)
		if rec.Code != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, rec.Code, c.status)
		}
		if c.status == 405 && rec.Header().Get("Allow") == "" {
			t.Errorf("%s: 405 without Allow", c.method)
		}
		if c.method == http.MethodHead && rec.Body.Len() != 0 {
			t.Errorf("HEAD returned a body")
		}
		if c.status >= 400 {
			var e map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e["code"] == "" || e["code"] != e["Code"] {
				t.Errorf("%s %s: error without both code pairs: %q", c.method, c.path, rec.Body)
			}
		}
	}
	if got := f.Counted(t, Name)[404]; got != 4 {
		t.Errorf("404s observed %d, want 4", got)
	}
	if len(f.asked) != 1 {
		t.Errorf("the broker was asked %d times, want once (for HEAD)", len(f.asked))
	}
}

// Every failure class gets its status, its Retry-After when retryable, and
// the broker's code and message in both pairs.
func TestFailuresByClass(t *testing.T) {
	cases := []struct {
		err        error
		status     int
		retryAfter bool
	}{
		{podresolve.ErrNotFound, 503, true},
		{podresolve.ErrHostAddress, 403, false},
		{&broker.Refusal{Code: broker.CodeNoRole, Message: "no role"}, 403, false},
		{&exchange.Error{Kind: exchange.Throttled, Code: "Throttling", Err: errors.New("slow down")}, 429, true},
		{&exchange.Error{Kind: exchange.InvalidRequest, Code: "ValidationError", Err: errors.New("bad arn")}, 400, false},
		{errors.New("anything else"), 503, true},
	}
	for _, c := range cases {
		f := newFake()
		f.err = c.err
		rec := do(handler(t, f), http.MethodGet, Path, "10.0.0.1", nil)
		want := broker.Classify(c.err)
		var e map[string]string
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		if rec.Code != c.status || e["code"] != want.Code || e["Message"] != want.Message || e["message"] != want.Message {
			t.Errorf("%v: %d %s, want %d with the broker's code %s", c.err, rec.Code, rec.Body, c.status, want.Code)
		}
		if (rec.Header().Get("Retry-After") != "") != c.retryAfter {
			t.Errorf("%v: Retry-After %q", c.err, rec.Header().Get("Retry-After"))
		}
		if n := len(f.Logged()); n != 1 {
			t.Errorf("%v: logged %d times, want once", c.err, n)
		}
	}
}

func TestCacheHitAllocatesNothing(t *testing.T) {
	h, _ := New(hit("ASIAPODA"), prometheus.NewRegistry())
	req := httptest.NewRequest(http.MethodGet, Path, nil)
	req.RemoteAddr = "10.0.0.1:40000"
	w := surfacetest.NewDiscard()
	allocs := testing.AllocsPerRun(100, func() {
		clear(w.Header())
		h.ServeHTTP(w, req)
	})
	if w.Code != http.StatusOK || allocs > 0 {
		t.Errorf("status %d, %.0f allocations per answer; want 200 and none", w.Code, allocs)
	}
}

// hit answers every request with the credentials of key, as from the
// broker's cache.
func hit(key string) surfacetest.Hit {
	return surfacetest.Hit{Answer: broker.Answer{Credentials: credsFor(key)}}
}

// BenchmarkCacheHit is the surface's share of a cached answer: address
// parsing, rendering and headers (the broker's share is pkg/broker's
// BenchmarkCacheHit).
func BenchmarkCacheHit(b *testing.B) {
	h, _ := New(hit("ASIAPODA"), prometheus.NewRegistry())
	req := httptest.NewRequest(http.MethodGet, Path, nil)
	req.RemoteAddr = "10.0.0.1:40000"
	w := surfacetest.NewDiscard()
	b.ReportAllocs()
	for b.Loop() {
		clear(w.Header())
		h.ServeHTTP(w, req)
	}
	if w.Code != http.StatusOK {
		b.Fatalf("status %d", w.Code)
	}
}
