package gcp_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/gcp"
)

const (
	provider = "projects/123456789/locations/global/workloadIdentityPools/cluster-pool/providers/cluster-oidc"
	email    = "app@proj-1.iam.gserviceaccount.com"
	// subjectToken looks like a JWT with parts long enough that a peer
	// quoting any one of them is caught.
	subjectToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbTphcHAifQ.c2lnbmF0dXJlLW9mLXRoZS1zdWJqZWN0LXRva2VuLXRoYXQtaXMtbG9uZw"
	fedToken     = "ya29.federated-access-token-0123456789abcdefghijklmnop"
	saToken      = "ya29.impersonated-access-token-0123456789abcdefghijk"
	scopeA       = "https://www.googleapis.com/auth/devstorage.read_only"
	scopeB       = "https://www.googleapis.com/auth/pubsub"
)

var t0 = time.Date(2026, 12, 2, 0, 30, 0, 0, time.UTC)

// call is one request the peer received.
type call struct {
	method, path string
	header       http.Header
	form         url.Values     // STS
	body         map[string]any // IAM Credentials
}

// reply is what the peer answers on one endpoint.
type reply struct {
	status int
	body   string
	// block makes the handler wait for the request's context to end and
	// then answer nothing (a hung upstream).
	block bool
}

// peer is Google STS and IAM Credentials in one httptest server.
type peer struct {
	srv *httptest.Server

	mu      sync.Mutex
	calls   []call
	replies map[string]reply // "sts", "generateAccessToken", "generateIdToken"
	// blocked, when set, hears the endpoint of each blocking reply as its
	// handler starts to wait.
	blocked chan string
}

func newPeer(t *testing.T) *peer {
	t.Helper()
	p := &peer{replies: map[string]reply{
		"sts":                 {200, `{"access_token":"` + fedToken + `","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3599}`, false},
		"generateAccessToken": {200, `{"accessToken":"` + saToken + `","expireTime":"2026-12-02T01:30:00.123456Z"}`, false},
		"generateIdToken":     {200, `{"token":"` + idToken(t0.Add(time.Hour)) + `"}`, false},
	}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *peer) serve(w http.ResponseWriter, r *http.Request) {
	c := call{method: r.Method, path: r.URL.Path, header: r.Header.Clone()}
	var ep string
	switch {
	case r.URL.Path == "/v1/token":
		ep = "sts"
		_ = r.ParseForm()
		c.form = r.PostForm
	case strings.HasSuffix(r.URL.Path, ":generateAccessToken"):
		ep = "generateAccessToken"
	case strings.HasSuffix(r.URL.Path, ":generateIdToken"):
		ep = "generateIdToken"
	default:
		http.NotFound(w, r)
		return
	}
	if ep != "sts" {
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &c.body)
	}
	p.mu.Lock()
	p.calls = append(p.calls, c)
	rep := p.replies[ep]
	blocked := p.blocked
	p.mu.Unlock()
	if rep.block {
		if blocked != nil {
			blocked <- ep
		}
		<-r.Context().Done()
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

func (p *peer) set(ep string, r reply) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replies[ep] = r
}

func (p *peer) received() []call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]call(nil), p.calls...)
}

func idToken(exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	hdr := enc([]byte(`{"alg":"RS256","kid":"g1","typ":"JWT"}`))
	claims := enc(fmt.Appendf(nil, `{"aud":"https://svc.example","azp":"1234","email":%q,"email_verified":true,"exp":%d,"iat":%d,"iss":"https://accounts.google.com","sub":"1234"}`, email, exp.Unix(), exp.Add(-time.Hour).Unix()))
	return hdr + "." + claims + "." + enc([]byte("signature-bytes-that-nobody-checks-here"))
}

func newExchanger(t *testing.T, p *peer, mod func(*gcp.Config)) *gcp.Exchanger {
	t.Helper()
	cfg := gcp.Config{
		Provider:               provider,
		STSEndpoint:            p.srv.URL,
		IAMCredentialsEndpoint: p.srv.URL + "/", // a trailing slash is dropped
		HTTPClient:             p.srv.Client(),
		Clock:                  clocktesting.NewFakePassiveClock(t0),
	}
	if mod != nil {
		mod(&cfg)
	}
	x, err := gcp.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func accessReq(role string, scopes ...string) exchange.Request {
	return exchange.Request{Token: subjectToken, Want: exchange.KindAccessToken, Role: role, Scopes: scopes}
}

func wantForm(scope string) url.Values {
	return url.Values{
		"audience":             {"//iam.googleapis.com/" + provider},
		"grant_type":           {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"requested_token_type": {"urn:ietf:params:oauth:token-type:access_token"},
		"subject_token_type":   {"urn:ietf:params:oauth:token-type:jwt"},
		"subject_token":        {subjectToken},
		"scope":                {scope},
	}
}

func checkSTSCall(t *testing.T, c call, scope string) {
	t.Helper()
	if c.method != http.MethodPost || c.path != "/v1/token" {
		t.Errorf("STS call %s %s, want POST /v1/token", c.method, c.path)
	}
	if got := c.header.Get("Content-Type"); got != "application/x-www-form-urlencoded" {
		t.Errorf("STS Content-Type %q", got)
	}
	if got := c.header.Get("Authorization"); got != "" {
		t.Errorf("STS call carries Authorization %q; the token exchange is unauthenticated", got)
	}
	if !reflect.DeepEqual(c.form, wantForm(scope)) {
		t.Errorf("STS form\n got %v\nwant %v", c.form, wantForm(scope))
	}
}

func TestNewDefaultsAndValidation(t *testing.T) {
	if _, err := gcp.New(gcp.Config{Provider: provider}); err != nil {
		t.Errorf("defaults: %v", err)
	}
	for _, tc := range []struct {
		name string
		cfg  gcp.Config
		want string
	}{
		{"no provider", gcp.Config{}, "workload identity provider"},
		{"full name", gcp.Config{Provider: "//iam.googleapis.com/" + provider}, "drop the //iam.googleapis.com/ prefix"},
		{"project id instead of number", gcp.Config{Provider: "projects/my-proj/locations/global/workloadIdentityPools/cluster-pool/providers/cluster-oidc"}, "NUMBER"},
		{"regional", gcp.Config{Provider: "projects/1/locations/europe-west1/workloadIdentityPools/cluster-pool/providers/cluster-oidc"}, "not projects/"},
		{"pool only", gcp.Config{Provider: "projects/1/locations/global/workloadIdentityPools/cluster-pool"}, "not projects/"},
		{"pool id too short", gcp.Config{Provider: "projects/1/locations/global/workloadIdentityPools/abc/providers/cluster-oidc"}, "not projects/"},
		{"trailing slash", gcp.Config{Provider: provider + "/"}, "not projects/"},
		{"sts not a URL", gcp.Config{Provider: provider, STSEndpoint: "sts.googleapis.com"}, "STS endpoint"},
		{"sts with query", gcp.Config{Provider: provider, STSEndpoint: "https://sts.googleapis.com?x=1"}, "STS endpoint"},
		{"iam ftp", gcp.Config{Provider: provider, IAMCredentialsEndpoint: "ftp://iam"}, "IAM Credentials endpoint"},
		{"duration too long", gcp.Config{Provider: provider, Duration: 13 * time.Hour}, "lifetime"},
		{"duration too short", gcp.Config{Provider: provider, Duration: time.Second}, "lifetime"},
		{"negative duration", gcp.Config{Provider: provider, Duration: -time.Hour}, "lifetime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := gcp.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestDefaultEndpoints(t *testing.T) {
	// With no endpoints configured, requests go to Google's hosts; a
	// transport that records and refuses shows which.
	var urls []string
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		urls = append(urls, r.URL.String())
		if r.URL.Path == "/v1/token" {
			return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(`{"access_token":"x","expires_in":60}`)), Header: http.Header{}}, nil
		}
		return nil, errors.New("refused by test")
	})
	x, err := gcp.New(gcp.Config{Provider: provider, HTTPClient: &http.Client{Transport: rt}})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = x.Exchange(context.Background(), accessReq(email))
	want := []string{
		"https://sts.googleapis.com/v1/token",
		"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/" + email + ":generateAccessToken",
	}
	if !reflect.DeepEqual(urls, want) {
		t.Errorf("requests went to %q, want %q", urls, want)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestTokenAudienceAndProvider(t *testing.T) {
	if got, want := gcp.TokenAudience(provider), "//iam.googleapis.com/"+provider; got != want {
		t.Errorf("TokenAudience = %q, want %q", got, want)
	}
	p, err := gcp.ParseProvider(provider)
	if err != nil {
		t.Fatal(err)
	}
	if want := (gcp.Provider{ProjectNumber: "123456789", Pool: "cluster-pool", ID: "cluster-oidc"}); p != want {
		t.Errorf("ParseProvider = %+v, want %+v", p, want)
	}
	if p.String() != provider {
		t.Errorf("String = %q", p.String())
	}
	want := "principal://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/cluster-pool/subject/system:serviceaccount:team:app"
	if got := p.Principal("system:serviceaccount:team:app"); got != want {
		t.Errorf("Principal = %q, want %q", got, want)
	}
}

func TestFederatedAccessToken(t *testing.T) {
	p := newPeer(t)
	x := newExchanger(t, p, nil)
	c, err := x.Exchange(context.Background(), accessReq("", scopeA, scopeB))
	if err != nil {
		t.Fatal(err)
	}
	calls := p.received()
	if len(calls) != 1 {
		t.Fatalf("%d calls, want 1 (STS only)", len(calls))
	}
	checkSTSCall(t, calls[0], scopeA+" "+scopeB)
	if got := calls[0].header.Get("Accept"); got != "application/json" {
		t.Errorf("Accept %q", got)
	}
	want := exchange.Credentials{
		Kind:        exchange.KindAccessToken,
		AccessToken: fedToken,
		TokenType:   "Bearer",
		Scopes:      []string{scopeA, scopeB},
		Expiration:  t0.Add(3599 * time.Second),
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("credentials\n got %+v\nwant %+v", c, want)
	}
}

func TestFederatedDefaultScopeAndGrantedScope(t *testing.T) {
	p := newPeer(t)
	p.set("sts", reply{200, `{"access_token":"` + fedToken + `","token_type":"bearer","expires_in":120,"scope":"` + scopeA + `"}`, false})
	x := newExchanger(t, p, nil)
	c, err := x.Exchange(context.Background(), accessReq(""))
	if err != nil {
		t.Fatal(err)
	}
	checkSTSCall(t, p.received()[0], gcp.CloudPlatformScope)
	if !reflect.DeepEqual(c.Scopes, []string{scopeA}) {
		t.Errorf("Scopes = %q, want what STS says it granted", c.Scopes)
	}
	if c.TokenType != "Bearer" || !c.Expiration.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("TokenType %q, Expiration %v", c.TokenType, c.Expiration)
	}
}

func TestImpersonatedAccessToken(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfgDur   time.Duration
		reqDur   time.Duration
		scopes   []string
		lifetime string
		scope    []any
	}{
		{"defaults", 0, 0, nil, "3600s", []any{gcp.CloudPlatformScope}},
		{"configured duration", 2 * time.Hour, 0, []string{scopeA}, "7200s", []any{scopeA}},
		{"request duration wins, truncated", 2 * time.Hour, 30*time.Minute + 700*time.Millisecond, []string{scopeA, scopeB}, "1800s", []any{scopeA, scopeB}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			x := newExchanger(t, p, func(c *gcp.Config) { c.Duration = tc.cfgDur })
			req := accessReq(email, tc.scopes...)
			req.Duration = tc.reqDur
			c, err := x.Exchange(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			calls := p.received()
			if len(calls) != 2 {
				t.Fatalf("%d calls, want STS then generateAccessToken", len(calls))
			}
			// The federated token only needs to call IAM Credentials.
			checkSTSCall(t, calls[0], gcp.CloudPlatformScope)
			iam := calls[1]
			if iam.method != http.MethodPost || iam.path != "/v1/projects/-/serviceAccounts/"+email+":generateAccessToken" {
				t.Errorf("IAM call %s %s", iam.method, iam.path)
			}
			if got := iam.header.Get("Authorization"); got != "Bearer "+fedToken {
				t.Errorf("IAM Authorization %q, want the federated token", got)
			}
			if got := iam.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("IAM Content-Type %q", got)
			}
			wantBody := map[string]any{"scope": tc.scope, "lifetime": tc.lifetime}
			if !reflect.DeepEqual(iam.body, wantBody) {
				t.Errorf("IAM body %v, want %v", iam.body, wantBody)
			}
			want := exchange.Credentials{
				Kind:        exchange.KindAccessToken,
				AccessToken: saToken,
				TokenType:   "Bearer",
				Scopes:      req.Scopes,
				Expiration:  time.Date(2026, 12, 2, 1, 30, 0, 123456000, time.UTC),
			}
			if want.Scopes == nil {
				want.Scopes = []string{gcp.CloudPlatformScope}
			}
			if !reflect.DeepEqual(c, want) {
				t.Errorf("credentials\n got %+v\nwant %+v", c, want)
			}
		})
	}
}

func TestExpireTimeWithOffset(t *testing.T) {
	p := newPeer(t)
	p.set("generateAccessToken", reply{200, `{"accessToken":"` + saToken + `","expireTime":"2026-12-02T02:30:00+01:00"}`, false})
	c, err := newExchanger(t, p, nil).Exchange(context.Background(), accessReq(email))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 12, 2, 1, 30, 0, 0, time.UTC); c.Expiration != want {
		t.Errorf("Expiration %v, want %v in UTC", c.Expiration, want)
	}
}

func TestIDToken(t *testing.T) {
	p := newPeer(t)
	x := newExchanger(t, p, nil)
	c, err := x.Exchange(context.Background(), exchange.Request{
		Token: subjectToken, Want: exchange.KindIDToken, Role: email, Audience: "https://svc.example",
		Scopes: []string{scopeA}, Duration: 5 * time.Hour, // both ignored
	})
	if err != nil {
		t.Fatal(err)
	}
	calls := p.received()
	if len(calls) != 2 {
		t.Fatalf("%d calls, want STS then generateIdToken", len(calls))
	}
	checkSTSCall(t, calls[0], gcp.CloudPlatformScope)
	iam := calls[1]
	if iam.path != "/v1/projects/-/serviceAccounts/"+email+":generateIdToken" {
		t.Errorf("IAM path %s", iam.path)
	}
	if got := iam.header.Get("Authorization"); got != "Bearer "+fedToken {
		t.Errorf("IAM Authorization %q", got)
	}
	if want := map[string]any{"audience": "https://svc.example", "includeEmail": true}; !reflect.DeepEqual(iam.body, want) {
		t.Errorf("IAM body %v, want %v", iam.body, want)
	}
	want := exchange.Credentials{Kind: exchange.KindIDToken, IDToken: exchange.Secret(idToken(t0.Add(time.Hour))), Expiration: t0.Add(time.Hour)}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("credentials\n got %+v\nwant %+v", c, want)
	}
}

// TestRefusedBeforeAnyCall covers requests that cannot succeed: each is
// InvalidRequest and reaches no upstream.
func TestRefusedBeforeAnyCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  exchange.Request
		want string
	}{
		{"no token", exchange.Request{Want: exchange.KindAccessToken}, "empty ServiceAccount token"},
		{"aws kind", exchange.Request{Token: subjectToken, Want: exchange.KindAWS}, "not credential kind"},
		{"no kind", exchange.Request{Token: subjectToken}, "not credential kind"},
		{"id token without role", exchange.Request{Token: subjectToken, Want: exchange.KindIDToken, Audience: "https://svc.example"}, "annotate the pod's ServiceAccount"},
		{"id token without audience", exchange.Request{Token: subjectToken, Want: exchange.KindIDToken, Role: email}, "needs an audience"},
		{"role with a slash", accessReq("a/../../b@proj.iam.gserviceaccount.com"), "not a Google service account email"},
		{"role with a colon", accessReq("app@proj.iam.gserviceaccount.com:signJwt"), "not a Google service account email"},
		{"role with a query", accessReq("app@proj.iam.gserviceaccount.com?x=1"), "not a Google service account email"},
		{"role not an email", accessReq("arn:aws:iam::123456789012:role/x"), "not a Google service account email"},
		{"scope with a space", accessReq("", "a b"), "not an OAuth scope"},
		{"empty scope", accessReq(email, ""), "not an OAuth scope"},
		{"duration too long", exchange.Request{Token: subjectToken, Want: exchange.KindAccessToken, Role: email, Duration: 13 * time.Hour}, "lifetime"},
		{"duration too short", exchange.Request{Token: subjectToken, Want: exchange.KindAccessToken, Role: email, Duration: 1500 * time.Millisecond}, "lifetime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), tc.req)
			xe := asError(t, err)
			if xe.Kind != exchange.InvalidRequest || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v (%v), want InvalidRequest containing %q", err, xe.Kind, tc.want)
			}
			if n := len(p.received()); n != 0 {
				t.Errorf("%d upstream calls, want none", n)
			}
		})
	}
	// Accepted forms of Role: the numeric unique ID and Google's default accounts.
	for _, role := range []string{"112233445566778899001", "123-compute@developer.gserviceaccount.com", "proj@appspot.gserviceaccount.com"} {
		p := newPeer(t)
		if _, err := newExchanger(t, p, nil).Exchange(context.Background(), accessReq(role)); err != nil {
			t.Errorf("Role %q: %v", role, err)
		}
	}
}

func asError(t *testing.T, err error) *exchange.Error {
	t.Helper()
	var xe *exchange.Error
	if !errors.As(err, &xe) {
		t.Fatalf("error %v (%T) is not an *exchange.Error", err, err)
	}
	return xe
}

func googleErr(status int, name, msg string, reasons ...string) string {
	var d []map[string]string
	for _, r := range reasons {
		d = append(d, map[string]string{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": r, "domain": "googleapis.com"})
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": status, "message": msg, "status": name, "details": d}})
	return string(b)
}

func oauthErr(code, desc string) string {
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	return string(b)
}

func TestErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ep     string // which endpoint fails
		status int
		body   string
		kind   exchange.ErrorKind
		code   string
	}{
		// STS
		{"sts invalid_grant (audience)", "sts", 400, oauthErr("invalid_grant", "The audience in ID Token [x] does not match the expected audience."), exchange.InvalidToken, "invalid_grant"},
		{"sts invalid_grant (expired)", "sts", 400, oauthErr("invalid_grant", "ID Token issued at 1 is stale to sign-in."), exchange.InvalidToken, "invalid_grant"},
		{"sts unauthorized_client (attribute condition)", "sts", 400, oauthErr("unauthorized_client", "The given credential is rejected by the attribute condition."), exchange.Denied, "unauthorized_client"},
		{"sts access_denied", "sts", 403, oauthErr("access_denied", "no"), exchange.Denied, "access_denied"},
		{"sts invalid_target (no such provider)", "sts", 400, oauthErr("invalid_target", "The target service indicated by the \"audience\" parameters is invalid."), exchange.InvalidRequest, "invalid_target"},
		{"sts invalid_request", "sts", 400, oauthErr("invalid_request", "Invalid value for \"subject_token_type\"."), exchange.InvalidRequest, "invalid_request"},
		{"sts invalid_scope", "sts", 400, oauthErr("invalid_scope", "bad scope"), exchange.InvalidRequest, "invalid_scope"},
		{"sts temporarily_unavailable", "sts", 503, oauthErr("temporarily_unavailable", ""), exchange.Transient, "temporarily_unavailable"},
		{"sts 429 RESOURCE_EXHAUSTED", "sts", 429, googleErr(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Token exchange requests'"), exchange.Throttled, "RESOURCE_EXHAUSTED"},
		{"sts 429 no body", "sts", 429, "", exchange.Throttled, ""},
		{"sts 500 INTERNAL", "sts", 500, googleErr(500, "INTERNAL", "Internal error encountered."), exchange.Transient, "INTERNAL"},
		{"sts 503 html", "sts", 503, "<html>Service Unavailable</html>", exchange.Transient, ""},
		{"sts 502 empty", "sts", 502, "", exchange.Transient, ""},
		{"sts unknown oauth code at 400", "sts", 400, oauthErr("something_new", "x"), exchange.InvalidRequest, "something_new"},
		{"sts unknown oauth code at 500", "sts", 500, oauthErr("something_new", "x"), exchange.Transient, "something_new"},
		{"sts redirect", "sts", 302, "", exchange.Transient, ""},
		// IAM Credentials
		{"iam PERMISSION_DENIED", "generateAccessToken", 403, googleErr(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).", "IAM_PERMISSION_DENIED"), exchange.Denied, "PERMISSION_DENIED"},
		{"iam INVALID_ARGUMENT (bad email)", "generateAccessToken", 400, googleErr(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), exchange.InvalidRequest, "INVALID_ARGUMENT"},
		{"iam INVALID_ARGUMENT (lifetime)", "generateAccessToken", 400, googleErr(400, "INVALID_ARGUMENT", "The lifetime must be at most 3600s."), exchange.InvalidRequest, "INVALID_ARGUMENT"},
		{"iam NOT_FOUND", "generateAccessToken", 404, googleErr(404, "NOT_FOUND", "Not found; Gaia id not found for email x"), exchange.InvalidRequest, "NOT_FOUND"},
		{"iam FAILED_PRECONDITION", "generateAccessToken", 400, googleErr(400, "FAILED_PRECONDITION", "disabled"), exchange.InvalidRequest, "FAILED_PRECONDITION"},
		{"iam UNAUTHENTICATED", "generateAccessToken", 401, googleErr(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), exchange.InvalidToken, "UNAUTHENTICATED"},
		{"iam 429 RESOURCE_EXHAUSTED", "generateAccessToken", 429, googleErr(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "RATE_LIMIT_EXCEEDED"), exchange.Throttled, "RESOURCE_EXHAUSTED"},
		{"iam 403 rate limit reason", "generateAccessToken", 403, googleErr(403, "PERMISSION_DENIED", "Rate limited", "RATE_LIMIT_EXCEEDED"), exchange.Throttled, "PERMISSION_DENIED"},
		{"iam 503 UNAVAILABLE", "generateAccessToken", 503, googleErr(503, "UNAVAILABLE", "The service is currently unavailable."), exchange.Transient, "UNAVAILABLE"},
		{"iam 504 DEADLINE_EXCEEDED", "generateAccessToken", 504, googleErr(504, "DEADLINE_EXCEEDED", "Deadline"), exchange.Transient, "DEADLINE_EXCEEDED"},
		{"iam 403 no body", "generateAccessToken", 403, "", exchange.Denied, ""},
		{"iam 401 no body", "generateAccessToken", 401, "", exchange.InvalidToken, ""},
		{"iam unknown status at 400", "generateAccessToken", 400, googleErr(400, "SOMETHING_NEW", "x"), exchange.InvalidRequest, "SOMETHING_NEW"},
		{"iam code that is not an identifier", "generateAccessToken", 400, googleErr(400, "bad code with spaces", "x"), exchange.InvalidRequest, ""},
		// The code decides where the status says otherwise.
		{"code over status: PERMISSION_DENIED at 400", "generateAccessToken", 400, googleErr(400, "PERMISSION_DENIED", "x"), exchange.Denied, "PERMISSION_DENIED"},
		{"code over status: RESOURCE_EXHAUSTED at 403", "generateAccessToken", 403, googleErr(403, "RESOURCE_EXHAUSTED", "Quota exceeded"), exchange.Throttled, "RESOURCE_EXHAUSTED"},
		{"code over status: INTERNAL at 400", "generateAccessToken", 400, googleErr(400, "INTERNAL", "x"), exchange.Transient, "INTERNAL"},
		{"code over status: INVALID_ARGUMENT at 500", "generateAccessToken", 500, googleErr(500, "INVALID_ARGUMENT", "x"), exchange.InvalidRequest, "INVALID_ARGUMENT"},
		{"code over status: invalid_grant at 401", "sts", 401, oauthErr("invalid_grant", "x"), exchange.InvalidToken, "invalid_grant"},
		{"code over status: server_error at 400", "sts", 400, oauthErr("server_error", "x"), exchange.Transient, "server_error"},
		{"id token PERMISSION_DENIED", "generateIdToken", 403, googleErr(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getOpenIdToken' denied"), exchange.Denied, "PERMISSION_DENIED"},
		{"id token 500", "generateIdToken", 500, "", exchange.Transient, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(tc.ep, reply{tc.status, tc.body, false})
			req := accessReq(email)
			if tc.ep == "generateIdToken" {
				req = exchange.Request{Token: subjectToken, Want: exchange.KindIDToken, Role: email, Audience: "https://svc.example"}
			}
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), req)
			xe := asError(t, err)
			if xe.Kind != tc.kind || xe.Code != tc.code {
				t.Errorf("error %v: kind %v code %q, want %v %q", err, xe.Kind, xe.Code, tc.kind, tc.code)
			}
			if wantRetry := tc.kind == exchange.Transient || tc.kind == exchange.Throttled; xe.Retryable() != wantRetry {
				t.Errorf("Retryable = %v", xe.Retryable())
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", tc.status)) {
				t.Errorf("error %q does not name the status", err)
			}
			// No retries: each endpoint is asked once.
			calls := p.received()
			wantCalls := 2
			if tc.ep == "sts" {
				wantCalls = 1
			}
			if len(calls) != wantCalls {
				t.Errorf("%d calls, want %d", len(calls), wantCalls)
			}
			assertNoSecret(t, err)
		})
	}
}

func TestUnusableAnswers(t *testing.T) {
	for _, tc := range []struct {
		name, ep, body, want string
		req                  exchange.Request
	}{
		{"sts not json", "sts", `not json`, "not the expected JSON", accessReq("")},
		{"sts no access_token", "sts", `{"expires_in":3600}`, "lacks access_token", accessReq("")},
		{"sts expires_in 0", "sts", `{"access_token":"x","expires_in":0}`, "positive expires_in", accessReq("")},
		{"sts expires_in missing", "sts", `{"access_token":"x"}`, "positive expires_in", accessReq("")},
		{"sts expires_in negative", "sts", `{"access_token":"x","expires_in":-5}`, "positive expires_in", accessReq("")},
		{"iam no accessToken", "generateAccessToken", `{"expireTime":"2026-12-02T01:30:00Z"}`, "lacks accessToken", accessReq(email)},
		{"iam no expireTime", "generateAccessToken", `{"accessToken":"x"}`, "not RFC 3339", accessReq(email)},
		{"iam expireTime garbage", "generateAccessToken", `{"accessToken":"x","expireTime":"tomorrow"}`, "not RFC 3339", accessReq(email)},
		{"iam expireTime passed", "generateAccessToken", `{"accessToken":"x","expireTime":"2026-12-02T00:30:00Z"}`, "has passed", accessReq(email)},
		{"id token missing", "generateIdToken", `{}`, "lacks token", idReq()},
		{"id token not a JWT", "generateIdToken", `{"token":"abc"}`, "not a JWT", idReq()},
		{"id token payload not base64", "generateIdToken", `{"token":"a.!!!.c"}`, "not base64url", idReq()},
		{"id token without exp", "generateIdToken", `{"token":"` + jwtWith(`{"aud":"x"}`) + `"}`, "no exp claim", idReq()},
		{"id token exp a string", "generateIdToken", `{"token":"` + jwtWith(`{"exp":"soon"}`) + `"}`, "not a JSON object", idReq()},
		{"id token expired", "generateIdToken", `{"token":"` + idToken(t0) + `"}`, "has passed", idReq()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(tc.ep, reply{200, tc.body, false})
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), tc.req)
			xe := asError(t, err)
			if xe.Kind != exchange.Transient || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v (%v), want Transient containing %q", err, xe.Kind, tc.want)
			}
			assertNoSecret(t, err)
		})
	}
}

func idReq() exchange.Request {
	return exchange.Request{Token: subjectToken, Want: exchange.KindIDToken, Role: email, Audience: "https://svc.example"}
}

func jwtWith(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(claims)) + "." + enc([]byte("sig"))
}

func TestIDTokenFractionalExp(t *testing.T) {
	p := newPeer(t)
	p.set("generateIdToken", reply{200, `{"token":"` + jwtWith(fmt.Sprintf(`{"exp":%d.5}`, t0.Add(time.Hour).Unix())) + `"}`, false})
	c, err := newExchanger(t, p, nil).Exchange(context.Background(), idReq())
	if err != nil {
		t.Fatal(err)
	}
	if !c.Expiration.Equal(t0.Add(time.Hour)) {
		t.Errorf("Expiration %v", c.Expiration)
	}
}

func TestNetworkFailuresAreTransient(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		p := newPeer(t)
		x := newExchanger(t, p, nil)
		p.srv.Close()
		_, err := x.Exchange(context.Background(), accessReq(""))
		if xe := asError(t, err); xe.Kind != exchange.Transient || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error %v (%v), want Transient naming the refusal", err, xe.Kind)
		}
		assertNoSecret(t, err)
	})
	t.Run("client timeout on STS", func(t *testing.T) {
		p := newPeer(t)
		p.set("sts", reply{block: true})
		x := newExchanger(t, p, func(c *gcp.Config) {
			c.HTTPClient = &http.Client{Timeout: 50 * time.Millisecond, Transport: p.srv.Client().Transport}
		})
		_, err := x.Exchange(context.Background(), accessReq(""))
		if xe := asError(t, err); xe.Kind != exchange.Transient || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("error %v (%v), want Transient timeout", err, xe.Kind)
		}
		assertNoSecret(t, err)
	})
	t.Run("caller's deadline on IAM", func(t *testing.T) {
		p := newPeer(t)
		p.set("generateAccessToken", reply{block: true})
		p.blocked = make(chan string, 1)
		x := newExchanger(t, p, nil)
		// The deadline passes once the IAM call waits, however long the
		// STS step took on a loaded machine.
		ctx := newDeadlineOnSignal()
		go func() { <-p.blocked; ctx.expire() }()
		_, err := x.Exchange(ctx, accessReq(email))
		xe := asError(t, err)
		if xe.Kind != exchange.Transient || !errors.Is(err, context.DeadlineExceeded) ||
			!strings.Contains(err.Error(), "generateAccessToken") || !strings.Contains(err.Error(), "caller's context") {
			t.Errorf("error %v (%v), want Transient wrapping DeadlineExceeded from generateAccessToken", err, xe.Kind)
		}
		assertNoSecret(t, err)
	})
	t.Run("503 once is not retried", func(t *testing.T) {
		p := newPeer(t)
		p.set("sts", reply{503, "", false})
		_, err := newExchanger(t, p, nil).Exchange(context.Background(), accessReq(""))
		if n := len(p.received()); err == nil || n != 1 {
			t.Errorf("err %v after %d calls, want one failed call", err, n)
		}
	})
}

// TestSecretsNeverInErrors has a peer that quotes everything it received
// (the subject token, a part of it, the Authorization header) in each place
// an error text could come from.
func TestSecretsNeverInErrors(t *testing.T) {
	parts := strings.Split(subjectToken, ".")
	for _, tc := range []struct {
		name, ep string
		status   int
		body     string
	}{
		{"sts description quotes token", "sts", 400, oauthErr("invalid_grant", "bad token "+subjectToken)},
		{"sts description quotes payload", "sts", 400, oauthErr("invalid_grant", "claims "+parts[1]+" rejected")},
		{"sts description quotes signature", "sts", 400, oauthErr("invalid_grant", "sig "+parts[2])},
		{"sts google message quotes token", "sts", 500, googleErr(500, "INTERNAL", "while handling "+subjectToken)},
		{"iam message quotes federated token", "generateAccessToken", 403, googleErr(403, "PERMISSION_DENIED", "Bearer "+fedToken+" is not allowed")},
		{"iam message quotes subject token", "generateAccessToken", 400, googleErr(400, "INVALID_ARGUMENT", subjectToken)},
		{"code quotes token", "sts", 400, oauthErr(subjectToken, "x")},
		{"code quotes token header", "sts", 400, oauthErr(parts[0], "x")},
		{"code quotes federated token", "generateAccessToken", 400, googleErr(400, fedToken, "x")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(tc.ep, reply{tc.status, tc.body, false})
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), accessReq(email))
			asError(t, err)
			assertNoSecret(t, err)
		})
	}
	// A successful exchange's credentials print redacted.
	p := newPeer(t)
	c, err := newExchanger(t, p, nil).Exchange(context.Background(), accessReq(email))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, saToken) {
			t.Errorf("credentials print their token: %s", s)
		}
	}
}

// assertNoSecret fails if the error's text, in any format and along its
// whole wrap chain, contains a token or a long part of one.
func assertNoSecret(t *testing.T, err error) {
	t.Helper()
	var texts []string
	for e := err; e != nil; e = errors.Unwrap(e) {
		texts = append(texts, e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e))
	}
	secrets := append(strings.Split(subjectToken, "."), fedToken, saToken, strings.TrimPrefix(fedToken, "ya29."))
	for _, text := range texts {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("error text %q contains a secret", text)
				return
			}
		}
	}
}

// The exchanger fits the broker's one-method interface.
var _ interface {
	Exchange(context.Context, exchange.Request) (exchange.Credentials, error)
} = (*gcp.Exchanger)(nil)

// deadlineOnSignal is a context whose deadline passes when expire is
// called: a test's way to let a deadline fall at one step of an exchange
// rather than after a time that a loaded machine may not keep.
type deadlineOnSignal struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newDeadlineOnSignal() *deadlineOnSignal {
	return &deadlineOnSignal{Context: context.Background(), done: make(chan struct{})}
}

func (c *deadlineOnSignal) expire()               { c.once.Do(func() { close(c.done) }) }
func (c *deadlineOnSignal) Done() <-chan struct{} { return c.done }
func (c *deadlineOnSignal) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}
