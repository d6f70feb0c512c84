package azureidentity

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

const (
	testHeader   = "ssrf-guard-1234"
	testClientID = "11111111-2222-3333-4444-555555555555"
	otherClient  = "99999999-2222-3333-4444-555555555555"
	testToken    = "eyJ0eXAiOiJKV1Qi.secret-access-token"
	testResource = "https://management.azure.com/"
	podAddr      = "10.1.2.3"
)

var t0 = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

var testPod = podresolve.Pod{Namespace: "ns", Name: "app-0", UID: "uid-1", ServiceAccount: "app"}

// errRefused stands for the broker's refusal of another client ID.
var errRefused = &broker.Refusal{Code: broker.CodeIdentityNotAllowed,
	Message: "ServiceAccount ns/app does not name the client ID this request asks for"}

// fakeBroker answers for one pod whose ServiceAccount names testClientID.
// Like the real broker it refuses another client ID.
type fakeBroker struct {
	surfacetest.Entry // Serve's failures

	clock   *clocktesting.FakePassiveClock
	credErr error
	// failFirst makes the first failFirst calls fail with errTransient.
	failFirst int
	lifetime  time.Duration // default one hour

	mu    sync.Mutex
	addrs []netip.Addr
	reqs  []broker.Request
}

func (f *fakeBroker) Credentials(_ context.Context, addr netip.Addr, req broker.Request) (broker.Answer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = append(f.addrs, addr)
	f.reqs = append(f.reqs, req)
	if f.credErr != nil {
		return broker.Answer{Pod: testPod}, f.credErr
	}
	if len(f.reqs) <= f.failFirst {
		return broker.Answer{Pod: testPod}, errTransient
	}
	if req.Identity != "" && req.Identity != testClientID {
		return broker.Answer{Pod: testPod}, errRefused
	}
	life := f.lifetime
	if life == 0 {
		life = time.Hour
	}
	c := &exchange.Credentials{Kind: req.Want, TokenType: "Bearer", Expiration: f.clock.Now().Add(life),
		AccessToken: exchange.Secret(testToken + "/" + req.Scope)}
	return broker.Answer{Pod: testPod, Identity: testClientID, Credentials: c}, nil
}

// calls is how many times Credentials was called.
func (f *fakeBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return f.Finish(f.Credentials(ctx, addr, req))
}

func (f *fakeBroker) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

var errTransient = errors.New("upstream is down")

func newTest(t *testing.T, mod func(*fakeBroker, *Config)) (*Handler, *fakeBroker) {
	t.Helper()
	fb := &fakeBroker{clock: clocktesting.NewFakePassiveClock(t0)}
	cfg := Config{Broker: fb, IdentityHeader: testHeader, Clock: fb.clock, Registerer: fb.Registry()}
	if mod != nil {
		mod(fb, &cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h, fb
}

// appService is an App Service style request as MSAL Go sends it.
func appService(query string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, TokenPath+"?"+query, nil)
	r.RemoteAddr = podAddr + ":40000"
	r.Header.Set("X-IDENTITY-HEADER", testHeader)
	return r
}

// imds is an IMDS style request.
func imds(query string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, TokenPath+"?"+query, nil)
	r.RemoteAddr = podAddr + ":40000"
	r.Header.Set("Metadata", "true")
	return r
}

const asQuery = "api-version=2019-08-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
const imdsQuery = "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

func do(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// decodeError checks an error answer's status and JSON and returns its
// code and description.
func decodeError(t *testing.T, w *httptest.ResponseRecorder, status int) (string, string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d; body %s", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	var e struct {
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %q: %v", w.Body, err)
	}
	if e.Error == "" || e.ErrorDescription == "" {
		t.Errorf("error body %q lacks a field", w.Body)
	}
	if strings.Contains(w.Body.String(), testToken) {
		t.Errorf("error body holds the token: %s", w.Body)
	}
	return e.Error, e.ErrorDescription
}

func TestNewChecksConfig(t *testing.T) {
	fb := &fakeBroker{}
	for name, cfg := range map[string]Config{
		"no broker":      {IdentityHeader: testHeader},
		"no header":      {Broker: fb},
		"space":          {Broker: fb, IdentityHeader: "a b"},
		"control":        {Broker: fb, IdentityHeader: "a\nb"},
		"too long":       {Broker: fb, IdentityHeader: strings.Repeat("x", MaxIdentityHeaderLen+1)},
		"non-ASCII byte": {Broker: fb, IdentityHeader: "caf\xc3\xa9"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if _, err := New(Config{Broker: fb, IdentityHeader: testHeader}); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestAppServiceAnswer(t *testing.T) {
	h, fb := newTest(t, nil)
	w := do(h, appService(asQuery))
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	// Exactly these fields, expires_on a string of Unix seconds, as App
	// Service answers 2019-08-01.
	var got map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"access_token": testToken + "/" + testResource,
		"expires_on":   strconv.FormatInt(t0.Add(time.Hour).Unix(), 10),
		"resource":     testResource,
		"token_type":   "Bearer",
		"client_id":    testClientID,
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	wantReq := broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: testResource}
	if len(fb.reqs) != 1 || fb.reqs[0] != wantReq {
		t.Errorf("requests %+v, want %+v", fb.reqs, wantReq)
	}
	if len(fb.addrs) != 1 || fb.addrs[0] != netip.MustParseAddr(podAddr) {
		t.Errorf("addresses %v", fb.addrs)
	}
	if got := fb.Counted(t, Name); len(got) != 1 || got[http.StatusOK] != 1 {
		t.Errorf("observed %v", got)
	}
}

func TestIMDSAnswer(t *testing.T) {
	h, fb := newTest(t, nil)
	fb.clock.SetTime(t0.Add(500 * time.Millisecond)) // both round down
	fb.lifetime = time.Hour - time.Second
	w := do(h, imds(imdsQuery))
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	// Every value a string, as IMDS sends them (adal broke on numbers).
	var got map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"access_token": testToken + "/" + testResource,
		"expires_in":   "3599",
		"expires_on":   strconv.FormatInt(t0.Add(time.Hour-time.Second).Unix(), 10),
		"not_before":   strconv.FormatInt(t0.Unix(), 10),
		"resource":     testResource,
		"token_type":   "Bearer",
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
}

func TestIdentityHeader(t *testing.T) {
	for name, set := range map[string]func(*http.Request){
		"wrong":  func(r *http.Request) { r.Header.Set("X-IDENTITY-HEADER", "guess") },
		"empty":  func(r *http.Request) { r.Header.Set("X-IDENTITY-HEADER", "") },
		"prefix": func(r *http.Request) { r.Header.Set("X-IDENTITY-HEADER", testHeader[:4]) },
		"longer": func(r *http.Request) { r.Header.Set("X-IDENTITY-HEADER", testHeader+"x") },
		"twice":  func(r *http.Request) { r.Header.Add("X-IDENTITY-HEADER", testHeader) },
		// Metadata: true does not excuse a wrong identity header.
		"wrong with Metadata": func(r *http.Request) {
			r.Header.Set("X-IDENTITY-HEADER", "guess")
			r.Header.Set("Metadata", "true")
		},
	} {
		t.Run(name, func(t *testing.T) {
			h, fb := newTest(t, nil)
			r := appService(asQuery)
			set(r)
			code, _ := decodeError(t, do(h, r), http.StatusUnauthorized)
			if code != CodeUnauthorized {
				t.Errorf("code %q", code)
			}
			if len(fb.reqs) != 0 {
				t.Errorf("broker asked: %+v", fb.reqs)
			}
		})
	}
}

func TestMetadataHeader(t *testing.T) {
	for name, v := range map[string][]string{
		"missing": nil,
		"false":   {"false"},
		"empty":   {""},
		"twice":   {"true", "true"},
	} {
		t.Run(name, func(t *testing.T) {
			h, fb := newTest(t, nil)
			r := imds(imdsQuery)
			r.Header.Del("Metadata")
			if v != nil {
				r.Header["Metadata"] = v
			}
			code, desc := decodeError(t, do(h, r), http.StatusBadRequest)
			if code != CodeBadRequest || desc != "Required metadata header not specified" {
				t.Errorf("error %q %q", code, desc)
			}
			if len(fb.reqs) != 0 {
				t.Errorf("broker asked: %+v", fb.reqs)
			}
		})
	}
	h, _ := newTest(t, nil)
	r := imds(imdsQuery)
	r.Header.Set("Metadata", "True")
	if w := do(h, r); w.Code != http.StatusOK {
		t.Errorf("Metadata: True: %d", w.Code)
	}
}

func TestForwardedRefused(t *testing.T) {
	h, fb := newTest(t, nil)
	r := appService(asQuery)
	r.Header.Set("X-Forwarded-For", "10.9.9.9")
	decodeError(t, do(h, r), http.StatusForbidden)
	if len(fb.reqs) != 0 {
		t.Errorf("broker asked: %+v", fb.reqs)
	}
}

func TestMethodAndPath(t *testing.T) {
	h, fb := newTest(t, nil)
	r := appService(asQuery)
	r.Method = http.MethodPost
	w := do(h, r)
	decodeError(t, w, http.StatusMethodNotAllowed)
	if w.Header().Get("Allow") != "GET" {
		t.Errorf("Allow %q", w.Header().Get("Allow"))
	}
	for _, p := range []string{
		"/", "/metadata/identity/oauth2/token/", "/metadata/identity/oauth2", "/msi/token",
		"/metadata/identity/oauth2/%74oken", "/metadata//identity/oauth2/token",
		"/metadata/identity/oauth2/./token", "/METADATA/identity/oauth2/token",
	} {
		r := httptest.NewRequest(http.MethodGet, "http://x"+p+"?"+asQuery, nil)
		r.RemoteAddr = podAddr + ":1"
		r.Header.Set("X-IDENTITY-HEADER", testHeader)
		if w := do(h, r); w.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, w.Code)
		}
	}
	if len(fb.reqs) != 0 {
		t.Errorf("broker asked: %+v", fb.reqs)
	}
}

func TestResourceRequired(t *testing.T) {
	for name, q := range map[string]string{
		"absent":      "api-version=2019-08-01",
		"empty":       "api-version=2019-08-01&resource=",
		"spaces":      "api-version=2019-08-01&resource=%20%20",
		"only suffix": "api-version=2019-08-01&resource=%2F.default",
	} {
		t.Run(name, func(t *testing.T) {
			h, fb := newTest(t, nil)
			code, desc := decodeError(t, do(h, appService(q)), http.StatusBadRequest)
			if code != CodeBadRequest || !strings.Contains(desc, "resource") {
				t.Errorf("error %q %q", code, desc)
			}
			if len(fb.reqs) != 0 {
				t.Errorf("broker asked: %+v", fb.reqs)
			}
		})
	}
}

func TestResourceBounded(t *testing.T) {
	for name, q := range map[string]string{
		"too long":   "resource=https://" + strings.Repeat("a", MaxResourceLen),
		"space":      "resource=https://a%20b",
		"control":    "resource=https://a%0Ab",
		"non-ASCII":  "resource=https://caf%C3%A9",
		"bad escape": "resource=https://a%zz",
		"long query": "resource=x&pad=" + strings.Repeat("p", MaxQuery),
	} {
		t.Run(name, func(t *testing.T) {
			h, fb := newTest(t, nil)
			decodeError(t, do(h, appService(q)), http.StatusBadRequest)
			if len(fb.reqs) != 0 {
				t.Errorf("broker asked: %+v", fb.reqs)
			}
		})
	}
	// The longest allowed resource passes.
	h, _ := newTest(t, nil)
	long := "https://" + strings.Repeat("a", MaxResourceLen-len("https://"))
	if w := do(h, appService("resource="+long)); w.Code != http.StatusOK {
		t.Errorf("resource of %d bytes: %d %s", len(long), w.Code, w.Body)
	}
}

// TestResourceCanonical: every spelling of one resource is one broker
// Request (one cache entry); a trailing slash is a different audience and
// stays.
func TestResourceCanonical(t *testing.T) {
	h, fb := newTest(t, nil)
	spellings := []string{
		"resource=https://vault.azure.net",
		"resource=https%3A%2F%2Fvault.azure.net",
		"resource=https://vault.azure.net/.default",
		"resource=https%3A%2F%2Fvault.azure.net%2F.default",
		"resource=%20https://vault.azure.net%20",
		"resource=+https://vault.azure.net+",
		"api-version=2019-08-01&resource=https://vault.azure.net&unknown=1",
		"resource=https://vault.azure.net&resource=https://other.example",
	}
	for _, q := range spellings {
		if w := do(h, appService(q)); w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", q, w.Code, w.Body)
		}
	}
	for _, q := range spellings {
		if w := do(h, imds(q)); w.Code != http.StatusOK {
			t.Fatalf("IMDS %s: %d %s", q, w.Code, w.Body)
		}
	}
	want := broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: "https://vault.azure.net"}
	for i, r := range fb.reqs {
		if r != want {
			t.Errorf("request %d (%s) = %+v, want %+v", i, spellings[i%len(spellings)], r, want)
		}
	}
	if tr, err := TokenRequest(" https://vault.azure.net/.default"); err != nil || tr != want {
		t.Errorf("TokenRequest = %+v, %v; want %+v", tr, err, want)
	}
	if _, err := TokenRequest(""); err == nil {
		t.Error("TokenRequest accepted an empty resource")
	}

	fb.reqs = nil
	for _, q := range []string{"resource=https://vault.azure.net/", "resource=https://vault.azure.net//.default"} {
		do(h, appService(q))
	}
	slash := broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: "https://vault.azure.net/"}
	if len(fb.reqs) != 2 || fb.reqs[0] != slash || fb.reqs[1] != slash {
		t.Errorf("trailing-slash requests %+v, want two of %+v", fb.reqs, slash)
	}
}

func TestClientID(t *testing.T) {
	h, fb := newTest(t, nil)
	w := do(h, appService(asQuery+"&client_id="+testClientID))
	if w.Code != http.StatusOK {
		t.Fatalf("own client ID: %d %s", w.Code, w.Body)
	}
	if !strings.Contains(w.Body.String(), `"client_id":"`+testClientID+`"`) {
		t.Errorf("body %s", w.Body)
	}
	want := broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Identity: testClientID, Scope: testResource}
	if len(fb.reqs) != 1 || fb.reqs[0] != want {
		t.Errorf("requests %+v, want %+v", fb.reqs, want)
	}

	// Another client ID: the broker's refusal, a 403 with its code.
	w = do(h, appService(asQuery+"&client_id="+otherClient))
	code, desc := decodeError(t, w, http.StatusForbidden)
	if code != broker.CodeIdentityNotAllowed || desc != errRefused.Message {
		t.Errorf("error %q %q", code, desc)
	}
	if len(fb.Logged()) != 1 || fb.Logged()[0].Class != broker.Refused {
		t.Errorf("logged %+v", fb.Logged())
	}
	if strings.Contains(w.Body.String(), otherClient) {
		t.Errorf("the answer echoes the caller's client_id: %s", w.Body)
	}

	// A client_id that cannot be one.
	for _, q := range []string{"client_id=" + strings.Repeat("a", MaxClientIDLen+1), "client_id=a%20b", "client_id=%zz"} {
		fb.reqs = nil
		decodeError(t, do(h, appService(asQuery+"&"+q)), http.StatusBadRequest)
		if len(fb.reqs) != 0 {
			t.Errorf("%s: broker asked %+v", q, fb.reqs)
		}
	}
}

func TestOtherSelectorsRefused(t *testing.T) {
	for _, k := range []string{"object_id", "principal_id", "mi_res_id", "msi_res_id"} {
		h, fb := newTest(t, nil)
		code, desc := decodeError(t, do(h, appService(asQuery+"&"+k+"=x")), http.StatusBadRequest)
		if code != CodeBadRequest || !strings.Contains(desc, "client_id") {
			t.Errorf("%s: %q %q", k, code, desc)
		}
		if len(fb.reqs) != 0 {
			t.Errorf("%s: broker asked %+v", k, fb.reqs)
		}
	}
}

// TestFailureStatus: each failure class gets its status, the broker's code
// and message, and Retry-After where a retry is due. A transient failure is
// never a 400.
func TestFailureStatus(t *testing.T) {
	cases := []struct {
		f          broker.Failure
		status     int
		retryAfter string
	}{
		{broker.Failure{Class: broker.Unavailable, Code: broker.CodeUnavailable, Message: "down", RetryAfter: 1500 * time.Millisecond}, 503, "2"},
		{broker.Failure{Class: broker.Unavailable, Code: broker.CodePodNotIdentified, Message: "who"}, 503, "1"},
		{broker.Failure{Class: broker.Throttled, Code: broker.CodeThrottled, Message: "slow", RetryAfter: 5 * time.Second}, 429, "5"},
		{broker.Failure{Class: broker.Throttled, Code: broker.CodeThrottled, Message: "slow"}, 429, ""},
		{broker.Failure{Class: broker.Refused, Code: broker.CodeDefaultServiceAccount, Message: "default"}, 403, ""},
		{broker.Failure{Class: broker.Invalid, Code: broker.CodeInvalidRole, Message: "bad id"}, 400, ""},
		{broker.Failure{Class: 0, Message: "unknown"}, 503, "1"},
	}
	for _, c := range cases {
		h, fb := newTest(t, func(fb *fakeBroker, cfg *Config) {
			fb.credErr = errors.New("some error")
			fb.Classify = func(error) broker.Failure { return c.f }
		})
		for _, r := range []*http.Request{appService(asQuery), imds(imdsQuery)} {
			w := do(h, r)
			code, desc := decodeError(t, w, c.status)
			wantCode := c.f.Code
			if wantCode == "" {
				wantCode = http.StatusText(c.status)
			}
			if code != wantCode || desc != c.f.Message {
				t.Errorf("%+v: error %q %q", c.f, code, desc)
			}
			if got := w.Header().Get("Retry-After"); got != c.retryAfter {
				t.Errorf("%+v: Retry-After %q, want %q", c.f, got, c.retryAfter)
			}
		}
		if got := fb.Counted(t, Name); len(fb.Logged()) != 2 || len(got) != 1 || got[c.status] != 2 {
			t.Errorf("%+v: logged %+v observed %v", c.f, fb.Logged(), got)
		}
	}
	for _, class := range []broker.Class{broker.Unavailable, broker.Throttled, broker.Refused, 0, 99} {
		if Status(class) == http.StatusBadRequest {
			t.Errorf("class %d is a 400", class)
		}
	}
}

// TestBrokerClassify runs the real broker.Classify: a refusal by policy is a
// 403 naming its code, and an unclassified error a 503.
func TestBrokerClassify(t *testing.T) {
	h, fb := newTest(t, nil)
	fb.credErr = errRefused
	code, _ := decodeError(t, do(h, appService(asQuery)), http.StatusForbidden)
	if code != broker.CodeIdentityNotAllowed {
		t.Errorf("code %q", code)
	}
	fb.credErr = errors.New("connection reset")
	decodeError(t, do(h, appService(asQuery)), http.StatusServiceUnavailable)
}

func TestExpiredIsRetry(t *testing.T) {
	h, fb := newTest(t, nil)
	fb.lifetime = 900 * time.Millisecond // less than a whole second left
	w := do(h, appService(asQuery))
	decodeError(t, w, http.StatusServiceUnavailable)
	if w.Header().Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
}

func TestNoAccessToken(t *testing.T) {
	h, _ := newTest(t, nil)
	h.b = &emptyBroker{}
	decodeError(t, do(h, appService(asQuery)), http.StatusInternalServerError)
}

type emptyBroker struct{ fakeBroker }

func (e *emptyBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return e.Finish(e.Credentials(ctx, addr, req))
}

func (*emptyBroker) Credentials(context.Context, netip.Addr, broker.Request) (broker.Answer, error) {
	return broker.Answer{Pod: testPod, Identity: testClientID, Credentials: &exchange.Credentials{Expiration: t0.Add(time.Hour)}}, nil
}

// TestIdentityFromPeerOnly: the broker is asked for the TCP peer's address
// (IPv4-mapped forms unmapped), whatever the headers say.
func TestIdentityFromPeerOnly(t *testing.T) {
	h, fb := newTest(t, nil)
	r := appService(asQuery)
	r.RemoteAddr = "[::ffff:10.1.2.3]:555"
	r.Header.Set("X-Real-IP", "10.7.7.7")
	r.Header.Set("Forwarded", "for=10.7.7.7")
	if w := do(h, r); w.Code != http.StatusOK {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if len(fb.addrs) != 1 || fb.addrs[0] != netip.MustParseAddr(podAddr) {
		t.Errorf("addresses %v", fb.addrs)
	}
	r = appService(asQuery)
	r.RemoteAddr = "garbage"
	decodeError(t, do(h, r), http.StatusBadRequest)
}

func TestTokenEscapedInJSON(t *testing.T) {
	h, _ := newTest(t, nil)
	w := do(h, appService(`resource=https://x.example/"q"`))
	var got map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("%s: %v", w.Body, err)
	}
	if got["resource"] != `https://x.example/"q"` {
		t.Errorf("resource %q", got["resource"])
	}
}

// TestHitPathAllocations: the surface answers, counts and times a cache hit
// without allocating (the broker's share is pkg/broker's
// BenchmarkCacheHit), a resource escaped as the clients send it
// (url.Values) included.
func TestHitPathAllocations(t *testing.T) {
	h, _ := newTest(t, nil)
	h.b = surfacetest.Hit{Answer: broker.Answer{Pod: testPod, Identity: testClientID, Credentials: hitCreds}}
	for r, want := range map[*http.Request]float64{
		appService("api-version=2019-08-01&resource=https://management.azure.com/"): 0,
		imds(imdsQuery): 0,
	} {
		w := surfacetest.NewDiscard()
		n := testing.AllocsPerRun(200, func() {
			clear(w.Header())
			h.ServeHTTP(w, r)
		})
		if w.Code != http.StatusOK || n > want {
			t.Errorf("%s: status %d, %v allocations per hit", r.URL, w.Code, n)
		}
	}
}

var hitCreds = &exchange.Credentials{Kind: exchange.KindAccessToken, AccessToken: testToken, Expiration: t0.Add(time.Hour)}
