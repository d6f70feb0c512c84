package aws_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
)

// exchanger is what the broker consumes; *STS must satisfy it.
type exchanger interface {
	Exchange(context.Context, exchange.Request) (exchange.Credentials, error)
}

var _ exchanger = (*aws.STS)(nil)

const (
	// testToken looks like a JWT so that the redaction checks cover its parts.
	testToken   = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwOndlYiJ9.c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1sZWFrLWFueXdoZXJl"
	testRole    = "arn:aws:iam::111122223333:role/web"
	testSession = "app.web-7d9f8-abcde.0123456789"

	accessKeyID     = "ASIAEXAMPLEACCESSKEY"
	secretAccessKey = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
	sessionToken    = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN//////////wEaDJ"

	testRequestID = "c6104cbe-af31-11e0-8154-cbc7ccf896c7"
)

// recorded is one request as the fake STS saw it.
type recorded struct {
	method string
	header http.Header
	form   url.Values
}

// fakeSTS is an httptest server speaking the STS Query protocol. It answers
// every request with status and body.
type fakeSTS struct {
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []recorded
	status int
	body   string
}

func newFakeSTS(t *testing.T, status int, body string) *fakeSTS {
	t.Helper()
	f := &fakeSTS{status: status, body: body}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serveHTTP))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSTS) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{method: r.Method, header: r.Header.Clone(), form: form})
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", testRequestID) // as real STS does
	w.WriteHeader(f.status)
	io.WriteString(w, f.body)
}

func (f *fakeSTS) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func successXML(assumedARN string, expiration string) string {
	user := ""
	if assumedARN != "" {
		user = `<AssumedRoleUser><Arn>` + assumedARN + `</Arn><AssumedRoleId>AROAEXAMPLE:` + testSession + `</AssumedRoleId></AssumedRoleUser>`
	}
	return `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:app:web</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    ` + user + `
    <Credentials>
      <SessionToken>` + sessionToken + `</SessionToken>
      <SecretAccessKey>` + secretAccessKey + `</SecretAccessKey>
      <Expiration>` + expiration + `</Expiration>
      <AccessKeyId>` + accessKeyID + `</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>`
}

func errorXML(typ, code, message string) string {
	var msg strings.Builder
	xml.EscapeText(&msg, []byte(message))
	return `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>` + typ + `</Type><Code>` + code + `</Code><Message>` + msg.String() + `</Message></Error>
  <RequestId>` + testRequestID + `</RequestId>
</ErrorResponse>`
}

func newSTS(t *testing.T, cfg aws.Config) *aws.STS {
	t.Helper()
	s, err := aws.New(cfg)
	if err != nil {
		t.Fatalf("NewSTS: %v", err)
	}
	return s
}

func request() exchange.Request {
	return exchange.Request{Token: testToken, Role: testRole, SessionName: testSession}
}

// assertNoSecret fails if text contains the token, any long part of it, or
// a credential.
func assertNoSecret(t *testing.T, text string) {
	t.Helper()
	secrets := append(strings.Split(testToken, "."), testToken, secretAccessKey, sessionToken)
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("text %q contains a secret (%.8s...)", text, s)
		}
	}
}

func TestExchangeSuccess(t *testing.T) {
	// Ambient credentials must neither be picked up nor sent.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIANODECREDENTIALS1")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "node-secret-that-must-not-be-used")
	t.Setenv("AWS_SESSION_TOKEN", "node-session-token")

	f := newFakeSTS(t, http.StatusOK,
		successXML("arn:aws:sts::444455556666:assumed-role/web/"+testSession, "2026-11-27T07:00:52.178085Z"))
	s := newSTS(t, aws.Config{Region: "eu-west-1", Endpoint: f.srv.URL})

	got, err := s.Exchange(context.Background(), request())
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	want := exchange.Credentials{
		Kind:            exchange.KindAWS,
		AccessKeyID:     accessKeyID,
		SecretAccessKey: secretAccessKey,
		SessionToken:    sessionToken,
		// From AssumedRoleUser.Arn, which wins over the role's account.
		AccountID:  "444455556666",
		Expiration: time.Date(2026, 11, 27, 7, 0, 52, 178085000, time.UTC),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("credentials:\n got %#v\nwant %#v", got, want)
	}
	if got.SecretAccessKey.Reveal() != secretAccessKey || got.SessionToken.Reveal() != sessionToken {
		t.Errorf("secrets not returned intact")
	}
	if got.Expiration.Location() != time.UTC {
		t.Errorf("expiration location %v, want UTC", got.Expiration.Location())
	}

	reqs := f.requests()
	if len(reqs) != 1 {
		t.Fatalf("STS saw %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.method != http.MethodPost {
		t.Errorf("method %s, want POST", r.method)
	}
	wantForm := map[string]string{
		"Action":           "AssumeRoleWithWebIdentity",
		"Version":          "2011-06-15",
		"RoleArn":          testRole,
		"RoleSessionName":  testSession,
		"WebIdentityToken": testToken,
		"DurationSeconds":  "3600",
	}
	for k, v := range wantForm {
		if got := r.form.Get(k); got != v {
			t.Errorf("form %s = %q, want %q", k, got, v)
		}
	}
	if len(r.form) != len(wantForm) {
		t.Errorf("form has %d fields, want %d: %v", len(r.form), len(wantForm), keys(r.form))
	}
	for _, h := range []string{"Authorization", "X-Amz-Security-Token", "X-Amz-Content-Sha256"} {
		if v := r.header.Get(h); v != "" {
			t.Errorf("request carries %s header %q: it must be unsigned", h, v)
		}
	}
	if ua := r.header.Get("User-Agent"); !strings.Contains(ua, "app/credbroker") {
		t.Errorf("User-Agent %q lacks app/credbroker", ua)
	}
}

func keys(v url.Values) []string {
	var out []string
	for k := range v {
		out = append(out, k)
	}
	return out
}

func TestExchangeAccountFromRoleWhenNoAssumedRoleUser(t *testing.T) {
	f := newFakeSTS(t, http.StatusOK, successXML("", "2026-11-27T07:00:52Z"))
	s := newSTS(t, aws.Config{Endpoint: f.srv.URL})
	got, err := s.Exchange(context.Background(), request())
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if got.AccountID != "111122223333" {
		t.Errorf("AccountID %q, want the role's 111122223333", got.AccountID)
	}
}

func TestExchangeDurationAndSessionName(t *testing.T) {
	tests := []struct {
		name        string
		cfg         time.Duration
		req         time.Duration
		session     string
		wantSeconds string
		wantSession string
	}{
		{name: "default one hour", wantSeconds: "3600", session: "a.b", wantSession: "a.b"},
		{name: "configured", cfg: 30 * time.Minute, wantSeconds: "1800", session: "a.b", wantSession: "a.b"},
		{name: "request overrides", cfg: 30 * time.Minute, req: 2 * time.Hour, wantSeconds: "7200", session: "a.b", wantSession: "a.b"},
		{name: "sub-second truncated", req: time.Hour + 999*time.Millisecond, wantSeconds: "3600", session: "a.b", wantSession: "a.b"},
		{name: "session name sanitised", session: "team a/pod é", wantSeconds: "3600", wantSession: "team-a-pod--"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSTS(t, http.StatusOK, successXML("", "2026-11-27T07:00:52Z"))
			s := newSTS(t, aws.Config{Endpoint: f.srv.URL, Duration: tt.cfg})
			req := request()
			req.Duration, req.SessionName = tt.req, tt.session
			if _, err := s.Exchange(context.Background(), req); err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			form := f.requests()[0].form
			if got := form.Get("DurationSeconds"); got != tt.wantSeconds {
				t.Errorf("DurationSeconds %q, want %q", got, tt.wantSeconds)
			}
			if got := form.Get("RoleSessionName"); got != tt.wantSession {
				t.Errorf("RoleSessionName %q, want %q", got, tt.wantSession)
			}
		})
	}
}

func TestExchangeErrorClasses(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		wantKind exchange.ErrorKind
		wantCode string
	}{
		{"AccessDenied 403", 403, errorXML("Sender", "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"), exchange.Denied, "AccessDenied"},
		{"AccessDenied 400", 400, errorXML("Sender", "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"), exchange.Denied, "AccessDenied"},
		{"AccessDeniedException", 400, errorXML("Sender", "AccessDeniedException", "denied"), exchange.Denied, "AccessDeniedException"},
		{"InvalidIdentityToken", 400, errorXML("Sender", "InvalidIdentityToken", "Incorrect token audience"), exchange.InvalidToken, "InvalidIdentityToken"},
		{"ExpiredTokenException", 400, errorXML("Sender", "ExpiredTokenException", "Token expired: current date/time 1764223252 must be before the expiration date/time 1764219652"), exchange.InvalidToken, "ExpiredTokenException"},
		{"ExpiredToken", 400, errorXML("Sender", "ExpiredToken", "The web identity token that was passed is expired"), exchange.InvalidToken, "ExpiredToken"},
		{"IDPRejectedClaim", 400, errorXML("Sender", "IDPRejectedClaim", "claim rejected"), exchange.InvalidToken, "IDPRejectedClaim"},
		{"IDPCommunicationError", 400, errorXML("Sender", "IDPCommunicationError", "Couldn't retrieve verification key from your identity provider"), exchange.Transient, "IDPCommunicationError"},
		{"Throttling 400", 400, errorXML("Sender", "Throttling", "Rate exceeded"), exchange.Throttled, "Throttling"},
		{"ThrottlingException", 400, errorXML("Sender", "ThrottlingException", "Rate exceeded"), exchange.Throttled, "ThrottlingException"},
		{"RequestLimitExceeded", 503, errorXML("Sender", "RequestLimitExceeded", "Request limit exceeded."), exchange.Throttled, "RequestLimitExceeded"},
		{"429 XML", 429, errorXML("Sender", "TooManyRequests", "slow down"), exchange.Throttled, "TooManyRequests"},
		{"429 plain text", 429, "Too Many Requests", exchange.Throttled, ""},
		{"ValidationError", 400, errorXML("Sender", "ValidationError", "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint"), exchange.InvalidRequest, "ValidationError"},
		{"MalformedPolicyDocument", 400, errorXML("Sender", "MalformedPolicyDocument", "bad policy"), exchange.InvalidRequest, "MalformedPolicyDocument"},
		{"RegionDisabledException", 403, errorXML("Sender", "RegionDisabledException", "STS is not activated in this region"), exchange.InvalidRequest, "RegionDisabledException"},
		{"unknown 4xx code", 400, errorXML("Sender", "InvalidParameterValue", "nope"), exchange.InvalidRequest, "InvalidParameterValue"},
		{"500 InternalFailure", 500, errorXML("Receiver", "InternalFailure", "internal error"), exchange.Transient, "InternalFailure"},
		{"503 ServiceUnavailable", 503, errorXML("Receiver", "ServiceUnavailable", "Service unavailable"), exchange.Transient, "ServiceUnavailable"},
		{"502 HTML from a proxy", 502, "<html><body>Bad Gateway</body></html>", exchange.Transient, ""},
		{"504 empty", 504, "", exchange.Transient, ""},
		{"200 garbage", 200, "this is not XML", exchange.Transient, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSTS(t, tt.status, tt.body)
			s := newSTS(t, aws.Config{Region: "us-east-1", Endpoint: f.srv.URL})

			_, err := s.Exchange(context.Background(), request())
			xe := assertExchangeError(t, err, tt.wantKind, tt.wantCode)
			if n := len(f.requests()); n != 1 {
				t.Errorf("STS saw %d requests, want exactly 1 (the SDK must not retry)", n)
			}
			if !strings.Contains(err.Error(), testRole) {
				t.Errorf("error %q does not name the role", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", tt.status)) {
				t.Errorf("error %q does not give the status %d", err, tt.status)
			}
			wantRetryable := tt.wantKind == exchange.Transient || tt.wantKind == exchange.Throttled
			if xe.Retryable() != wantRetryable {
				t.Errorf("Retryable() = %v, want %v", xe.Retryable(), wantRetryable)
			}
		})
	}
}

// assertExchangeError checks that err is an *exchange.Error of the given kind
// and code whose text carries no secret, and returns it.
func assertExchangeError(t *testing.T, err error, kind exchange.ErrorKind, code string) *exchange.Error {
	t.Helper()
	if err == nil {
		t.Fatal("Exchange succeeded, want an error")
	}
	var xe *exchange.Error
	if !errors.As(err, &xe) {
		t.Fatalf("error %T %q is not an *exchange.Error", err, err)
	}
	if xe.Kind != kind || xe.Code != code {
		t.Errorf("got kind %v code %q, want kind %v code %q (error: %v)", xe.Kind, xe.Code, kind, code, err)
	}
	assertNoSecret(t, err.Error())
	assertNoSecret(t, fmt.Sprintf("%+v %#v", err, err))
	return xe
}

func TestExchangeErrorKeepsAPIError(t *testing.T) {
	f := newFakeSTS(t, 400, errorXML("Sender", "InvalidIdentityToken", "No OpenIDConnect provider found in your account for https://oidc.example"))
	s := newSTS(t, aws.Config{Endpoint: f.srv.URL})
	_, err := s.Exchange(context.Background(), request())
	var api smithy.APIError
	if !errors.As(err, &api) {
		t.Fatalf("error %v does not wrap a smithy.APIError", err)
	}
	if api.ErrorCode() != "InvalidIdentityToken" {
		t.Errorf("APIError code %q", api.ErrorCode())
	}
	for _, want := range []string{"No OpenIDConnect provider found", "request id " + testRequestID} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// A peer that is not STS might quote the request back; the token must still
// stay out of the error, including the wrapped chain.
func TestExchangeErrorWithholdsEchoedToken(t *testing.T) {
	parts := strings.Split(testToken, ".")
	for name, echoed := range map[string]string{"whole token": testToken, "signature only": parts[2]} {
		t.Run(name, func(t *testing.T) {
			f := newFakeSTS(t, 400, errorXML("Sender", "InvalidIdentityToken", "bad token: "+echoed))
			s := newSTS(t, aws.Config{Endpoint: f.srv.URL})
			_, err := s.Exchange(context.Background(), request())
			assertExchangeError(t, err, exchange.InvalidToken, "InvalidIdentityToken")
			for e := err; e != nil; e = errors.Unwrap(e) {
				assertNoSecret(t, e.Error())
			}
			var api smithy.APIError
			if errors.As(err, &api) {
				assertNoSecret(t, api.ErrorMessage())
			}
		})
	}
}

func TestExchangeConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	s := newSTS(t, aws.Config{Endpoint: "http://" + addr})
	_, err = s.Exchange(context.Background(), request())
	assertExchangeError(t, err, exchange.Transient, "")
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not say the connection was refused", err)
	}
}

// hangingServer accepts requests and never answers until the test ends.
func hangingServer(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv, &n
}

func TestExchangeContextDeadline(t *testing.T) {
	srv, n := hangingServer(t)
	s := newSTS(t, aws.Config{Endpoint: srv.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()

	_, err := s.Exchange(ctx, request())
	assertExchangeError(t, err, exchange.Transient, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
	}
	if got := n.Load(); got != 1 {
		t.Errorf("server saw %d requests, want 1", got)
	}
}

func TestExchangeHTTPClientTimeout(t *testing.T) {
	srv, _ := hangingServer(t)
	s := newSTS(t, aws.Config{Endpoint: srv.URL, HTTPClient: &http.Client{Timeout: 200 * time.Millisecond}})

	_, err := s.Exchange(context.Background(), request())
	assertExchangeError(t, err, exchange.Transient, "")
	if !strings.Contains(err.Error(), "timeout") {
		t.Errorf("error %q does not say it timed out", err)
	}
}

func TestExchangeRejectsBeforeCalling(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*exchange.Request)
	}{
		{"empty token", func(r *exchange.Request) { r.Token = "" }},
		{"role not an ARN", func(r *exchange.Request) { r.Role = "web" }},
		{"role without account", func(r *exchange.Request) { r.Role = "arn:aws:iam:::role/web" }},
		{"empty session name", func(r *exchange.Request) { r.SessionName = "" }},
		{"one-character session name", func(r *exchange.Request) { r.SessionName = "x" }},
		{"duration too short", func(r *exchange.Request) { r.Duration = 14 * time.Minute }},
		{"duration too long", func(r *exchange.Request) { r.Duration = 13 * time.Hour }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSTS(t, http.StatusOK, successXML("", "2026-11-27T07:00:52Z"))
			s := newSTS(t, aws.Config{Endpoint: f.srv.URL})
			req := request()
			tt.mutate(&req)
			_, err := s.Exchange(context.Background(), req)
			assertExchangeError(t, err, exchange.InvalidRequest, "")
			if n := len(f.requests()); n != 0 {
				t.Errorf("STS saw %d requests, want 0", n)
			}
		})
	}
}

func TestExchangeIncompleteResponse(t *testing.T) {
	body := strings.Replace(successXML("", "2026-11-27T07:00:52Z"), "<SessionToken>"+sessionToken+"</SessionToken>", "", 1)
	f := newFakeSTS(t, http.StatusOK, body)
	s := newSTS(t, aws.Config{Endpoint: f.srv.URL})
	_, err := s.Exchange(context.Background(), request())
	assertExchangeError(t, err, exchange.Transient, "")
}

func TestNewSTSConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  aws.Config
	}{
		{"neither region nor endpoint", aws.Config{}},
		{"malformed region", aws.Config{Region: "EU West 1"}},
		{"relative endpoint", aws.Config{Endpoint: "sts.local:5000"}},
		{"endpoint with other scheme", aws.Config{Endpoint: "ftp://sts.local"}},
		{"duration too short", aws.Config{Region: "us-east-1", Duration: time.Minute}},
		{"duration too long", aws.Config{Region: "us-east-1", Duration: 24 * time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := aws.New(tt.cfg); err == nil {
				t.Errorf("NewSTS(%+v) = %v, want an error", tt.cfg, s)
			}
		})
	}
}

// hostRecorder is a transport that records where requests go and fails
// them: the real regional endpoints are out of reach from tests.
type hostRecorder struct {
	mu    sync.Mutex
	hosts []string
}

func (h *hostRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	h.mu.Lock()
	h.hosts = append(h.hosts, r.URL.Scheme+"://"+r.URL.Host+r.URL.Path)
	h.mu.Unlock()
	return nil, errors.New("recorded, not sent")
}

func TestExchangeUsesRegionalEndpoint(t *testing.T) {
	tests := []struct {
		region string
		want   string
	}{
		// us-east-1 too: never the legacy global sts.amazonaws.com.
		{"us-east-1", "https://sts.us-east-1.amazonaws.com/"},
		{"eu-west-1", "https://sts.eu-west-1.amazonaws.com/"},
		{"cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn/"},
		{"us-gov-west-1", "https://sts.us-gov-west-1.amazonaws.com/"},
	}
	for _, tt := range tests {
		t.Run(tt.region, func(t *testing.T) {
			rec := &hostRecorder{}
			s := newSTS(t, aws.Config{Region: tt.region, HTTPClient: &http.Client{Transport: rec}})
			_, err := s.Exchange(context.Background(), request())
			assertExchangeError(t, err, exchange.Transient, "")
			if len(rec.hosts) != 1 || rec.hosts[0] != tt.want {
				t.Errorf("requests went to %v, want [%s]", rec.hosts, tt.want)
			}
		})
	}
}

// Concurrent exchanges on one STS are safe (run with -race) and each makes
// its own call.
//
// Connection reuse is not asserted: against a loopback server that answers
// at once, net/http sometimes sees the SDK's request body closed before its
// write loop finishes and drops the connection, so the count of connections
// varies from run to run.
func TestExchangeConcurrent(t *testing.T) {
	f := newFakeSTS(t, http.StatusOK, successXML("", "2026-11-27T07:00:52Z"))
	s := newSTS(t, aws.Config{Endpoint: f.srv.URL})

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := s.Exchange(context.Background(), request())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Exchange: %v", err)
		}
	}
	if got := len(f.requests()); got != 8 {
		t.Errorf("STS saw %d requests, want 8", got)
	}
}
