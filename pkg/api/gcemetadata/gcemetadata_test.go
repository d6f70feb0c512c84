package gcemetadata

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
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
	testProject = "my-project"
	testNumber  = "123456789012"
	testEmail   = "app@my-project.iam.gserviceaccount.com"
	testToken   = "ya29.secret-access-token"
	podAddr     = "10.1.2.3"
)

var t0 = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

// fakeBroker answers for one pod. Its identity is testEmail unless
// federated is set.
type fakeBroker struct {
	surfacetest.Entry // Serve's and ServeIdentity's failures

	clock     *clocktesting.FakePassiveClock
	federated bool
	// answerIdentity, when set, is the identity Credentials answers with
	// (the annotation changed between Identity and Credentials).
	answerIdentity *string
	identityErr    error
	credErr        error
	lifetime       time.Duration // default one hour
	// tokenless makes Credentials answer without the token asked for.
	tokenless bool

	mu            sync.Mutex
	addrs         []netip.Addr
	reqs          []broker.Request
	identityCalls int
}

var testPod = podresolve.Pod{Namespace: "ns", Name: "app-0", UID: "uid-1", ServiceAccount: "app"}

func (f *fakeBroker) id() string {
	if f.federated {
		return ""
	}
	return testEmail
}

func (f *fakeBroker) Identity(_ context.Context, addr netip.Addr, cloud exchange.Cloud) (podresolve.Pod, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identityCalls++
	f.addrs = append(f.addrs, addr)
	if cloud != exchange.GCP {
		return podresolve.Pod{}, "", fmt.Errorf("cloud %q", cloud)
	}
	if f.identityErr != nil {
		return testPod, "", f.identityErr
	}
	return testPod, f.id(), nil
}

func (f *fakeBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return f.Finish(f.Credentials(ctx, addr, req))
}

func (f *fakeBroker) ServeIdentity(ctx context.Context, addr netip.Addr, cloud exchange.Cloud) (string, *broker.Failure) {
	_, id, err := f.Identity(ctx, addr, cloud)
	if err != nil {
		return "", f.Fail(err)
	}
	return id, nil
}

func (f *fakeBroker) Credentials(_ context.Context, addr netip.Addr, req broker.Request) (broker.Answer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = append(f.addrs, addr)
	f.reqs = append(f.reqs, req)
	if f.credErr != nil {
		return broker.Answer{Pod: testPod}, f.credErr
	}
	id := f.id()
	if f.answerIdentity != nil {
		id = *f.answerIdentity
	}
	life := f.lifetime
	if life == 0 {
		life = time.Hour
	}
	c := &exchange.Credentials{Kind: req.Want, Expiration: f.clock.Now().Add(life)}
	if f.tokenless {
		return broker.Answer{Pod: testPod, Identity: id, Credentials: c}, nil
	}
	switch req.Want {
	case exchange.KindAccessToken:
		c.AccessToken = exchange.Secret(testToken + "/" + req.Scope)
		c.TokenType = "Bearer"
	case exchange.KindIDToken:
		c.IDToken = exchange.Secret(fakeJWT(req.Scope, c.Expiration))
	}
	return broker.Answer{Pod: testPod, Identity: id, Credentials: c}, nil
}

// fakeJWT is shaped like a Google ID token: clients decode its payload
// without checking the signature (Python reads exp from it).
func fakeJWT(aud string, exp time.Time) string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"RS256","kid":"k1","typ":"JWT"}`))
	p, _ := json.Marshal(map[string]any{"aud": aud, "azp": testEmail, "email": testEmail,
		"email_verified": true, "exp": exp.Unix(), "iat": exp.Add(-time.Hour).Unix(),
		"iss": "https://accounts.google.com", "sub": "1234567890"})
	return h + "." + enc.EncodeToString(p) + "." + enc.EncodeToString([]byte("signature"))
}

func newTest(t *testing.T, mod func(*fakeBroker, *Config)) (*Handler, *fakeBroker) {
	t.Helper()
	fb := &fakeBroker{clock: clocktesting.NewFakePassiveClock(t0)}
	cfg := Config{Broker: fb, ProjectID: testProject, NumericProjectID: testNumber, Clock: fb.clock, Registerer: fb.Registry()}
	if mod != nil {
		mod(fb, &cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h, fb
}

// do sends one request from the pod's address. target is the request
// line's URI, sent as is (no cleaning, no escaping).
func do(h http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "http://169.254.170.23"+target, nil)
	r.RemoteAddr = podAddr + ":40000"
	r.Header.Set("Metadata-Flavor", "Google")
	for k, v := range hdr {
		if v == "<unset>" {
			r.Header.Del(k)
			continue
		}
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

const sa = "/computeMetadata/v1/instance/service-accounts/"

func TestRules(t *testing.T) {
	const text, js = "text/plain; charset=utf-8", "application/json"
	noFlavor := map[string]string{"Metadata-Flavor": "<unset>"}
	cases := []struct {
		name     string
		method   string // default GET
		target   string
		hdr      map[string]string
		fed      bool
		status   int
		ctype    string
		body     string // exact, unless contains is set
		contains string
		location string
	}{
		{name: "root", target: "/", status: 200, ctype: text, body: "computeMetadata/\n"},
		{name: "root without the request header (Go's GCE probe sends none)", target: "/", hdr: noFlavor, status: 200, body: "computeMetadata/\n"},
		{name: "project id", target: "/computeMetadata/v1/project/project-id", status: 200, ctype: text, body: testProject},
		{name: "numeric project id", target: "/computeMetadata/v1/project/numeric-project-id", status: 200, ctype: text, body: testNumber},
		{name: "universe", target: "/computeMetadata/v1/universe/universe-domain", status: 200, ctype: text, body: "googleapis.com"},
		{name: "computeMetadata redirects", target: "/computeMetadata", status: 301, location: "/computeMetadata/"},
		{name: "computeMetadata dir", target: "/computeMetadata/", status: 200, ctype: text, body: "v1/\n"},
		{name: "v1 redirects", target: "/computeMetadata/v1", status: 301, location: "/computeMetadata/v1/"},
		{name: "v1 dir", target: "/computeMetadata/v1/", status: 200, ctype: text, body: "instance/\nproject/\nuniverse/\n"},
		{name: "v1 recursive", target: "/computeMetadata/v1/?recursive=true", status: 200, ctype: js,
			contains: `"project":{"numericProjectId":123456789012,"projectId":"my-project"},"universe":{"universeDomain":"googleapis.com"}}`},
		{name: "instance redirects (Node's detection asks for it)", target: "/computeMetadata/v1/instance", status: 301, location: "/computeMetadata/v1/instance/"},
		{name: "instance dir", target: "/computeMetadata/v1/instance/", status: 200, ctype: text, body: "service-accounts/\n"},
		{name: "instance recursive", target: "/computeMetadata/v1/instance/?recursive=true", status: 200, ctype: js,
			contains: `{"serviceAccounts":{"` + testEmail + `":{"aliases":["default"],"email":"` + testEmail + `"`},
		{name: "project redirects", target: "/computeMetadata/v1/project", status: 301, location: "/computeMetadata/v1/project/"},
		{name: "project dir", target: "/computeMetadata/v1/project/", status: 200, ctype: text, body: "numeric-project-id\nproject-id\n"},
		{name: "project recursive", target: "/computeMetadata/v1/project/?recursive=true", status: 200, ctype: js,
			body: `{"numericProjectId":123456789012,"projectId":"my-project"}`},
		{name: "universe dir", target: "/computeMetadata/v1/universe/", status: 200, ctype: text, body: "universe-domain\n"},
		{name: "universe recursive", target: "/computeMetadata/v1/universe/?recursive=true", status: 200, ctype: js, body: `{"universeDomain":"googleapis.com"}`},
		{name: "listing", target: sa, status: 200, ctype: text, body: "default/\n" + testEmail + "/\n"},
		{name: "listing federated", target: sa, fed: true, status: 200, body: "default/\nmy-project.svc.id.goog/\n"},
		{name: "listing without slash redirects", target: "/computeMetadata/v1/instance/service-accounts", status: 301, location: sa},
		{name: "account without slash redirects, query kept", target: sa + "default?recursive=true", status: 301, location: sa + "default/?recursive=true"},
		{name: "email account without slash redirects", target: sa + testEmail, status: 301, location: sa + testEmail + "/"},
		{name: "default dir", target: sa + "default/", status: 200, ctype: text, body: "aliases\nemail\nidentity\nscopes\ntoken\n"},
		{name: "default email", target: sa + "default/email", status: 200, ctype: text, body: testEmail},
		{name: "default email federated", target: sa + "default/email", fed: true, status: 200, body: "my-project.svc.id.goog"},
		{name: "email path email", target: sa + testEmail + "/email", status: 200, body: testEmail},
		{name: "federated alias path", target: sa + "my-project.svc.id.goog/email", fed: true, status: 200, body: "my-project.svc.id.goog"},
		{name: "aliases", target: sa + "default/aliases", status: 200, ctype: text, body: "default\n"},
		{name: "scopes", target: sa + "default/scopes", status: 200, ctype: text, body: DefaultScope + "\n"},
		{name: "recursive account", target: sa + "default/?recursive=true", status: 200, ctype: js,
			body: `{"aliases":["default"],"email":"` + testEmail + `","scopes":["` + DefaultScope + `"]}`},
		{name: "recursive email account", target: sa + testEmail + "/?recursive=True&alt=json", status: 200, ctype: js,
			body: `{"aliases":["default"],"email":"` + testEmail + `","scopes":["` + DefaultScope + `"]}`},
		{name: "recursive listing", target: sa + "?recursive=true", status: 200, ctype: js,
			contains: `"default":{"aliases":["default"],"email":"` + testEmail + `"`},
		{name: "token", target: sa + "default/token", status: 200, ctype: js,
			body: `{"access_token":"` + testToken + "/" + DefaultScope + `","expires_in":3600,"token_type":"Bearer"}`},
		{name: "token, unknown parameters ignored", target: sa + "default/token?transport=mtls&licenses=TRUE&x", status: 200, ctype: js, contains: `"expires_in":3600`},
		{name: "identity standard", target: sa + "default/identity?audience=https://svc.example&format=standard&licenses=FALSE", status: 200, ctype: text, contains: "eyJ"},
		{name: "identity full", target: sa + "default/identity?audience=https%3A%2F%2Fsvc.example&format=full", status: 200, ctype: text, contains: "eyJ"},
		{name: "identity for a federated pod", target: sa + "default/identity?audience=a", fed: true, status: 404, contains: "NoGoogleServiceAccount: identity tokens need a Google service account"},
		{name: "identity for a federated pod, alias path", target: sa + "my-project.svc.id.goog/identity?audience=a", fed: true, status: 404, contains: "NoGoogleServiceAccount"},
		{name: "token for a federated pod", target: sa + "default/token", fed: true, status: 200, contains: `"access_token":"` + testToken},
		{name: "token for a federated pod, alias path", target: sa + "my-project.svc.id.goog/token", fed: true, status: 200, contains: `"access_token":"` + testToken},
		{name: "identity without audience", target: sa + "default/identity", status: 400, ctype: text, contains: "audience"},
		{name: "identity with empty audience", target: sa + "default/identity?audience=&format=full", status: 400, contains: "audience"},
		{name: "identity with a huge audience", target: sa + "default/identity?audience=" + strings.Repeat("a", MaxAudienceLen+1), status: 400},
		{name: "identity with a control character", target: sa + "default/identity?audience=a%0Ab", status: 400},
		{name: "missing request header", target: sa + "default/token", hdr: noFlavor, status: 403, ctype: text, contains: "Metadata-Flavor"},
		{name: "wrong request header", target: sa + "default/token", hdr: map[string]string{"Metadata-Flavor": "google"}, status: 403},
		{name: "X-Forwarded-For", target: sa + "default/token", hdr: map[string]string{"X-Forwarded-For": "10.9.9.9"}, status: 403, contains: "X-Forwarded-For"},
		{name: "empty X-Forwarded-For", target: "/", hdr: map[string]string{"X-Forwarded-For": ""}, status: 403},
		{name: "POST", method: "POST", target: sa + "default/token", status: 405},
		{name: "HEAD", method: "HEAD", target: "/", status: 405},
		{name: "PUT", method: "PUT", target: "/computeMetadata/v1/project/project-id", status: 405},
		{name: "unknown email", target: sa + "other@my-project.iam.gserviceaccount.com/token", status: 404},
		{name: "unknown email dir", target: sa + "other@my-project.iam.gserviceaccount.com/", status: 404},
		{name: "federated name for an annotated pod", target: sa + "my-project.svc.id.goog/token", status: 404},
		{name: "email for a federated pod", target: sa + testEmail + "/token", fed: true, status: 404},
		{name: "unknown leaf", target: sa + "default/key", status: 404},
		{name: "leaf with a slash", target: sa + "default/token/", status: 404},
		{name: "other path", target: "/computeMetadata/v1/instance/hostname", status: 404},
		{name: "v1beta1", target: "/computeMetadata/v1beta1/project/project-id", status: 404},
		{name: "no prefix", target: "/project/project-id", status: 404},
		{name: "double slash", target: "/computeMetadata/v1//project/project-id", status: 404},
		{name: "double slash in accounts", target: sa + "default//token", status: 404},
		{name: "leading double slash", target: "//computeMetadata/v1/project/project-id", status: 404},
		{name: "escaped slash", target: "/computeMetadata/v1/project%2Fproject-id", status: 404},
		{name: "escaped letter", target: "/computeMetadata/v1/project/project%2Did", status: 404},
		{name: "escaped space", target: "/computeMetadata/v1/project/project-id%20", status: 404},
		{name: "escaped account", target: sa + "%64efault/token", status: 404},
		{name: "dot dot", target: sa + "default/../default/token", status: 404},
		{name: "dot dot to another account", target: sa + "x/../" + testEmail + "/token", status: 404},
		{name: "dot account", target: sa + "./token", status: 404},
		{name: "dot dot account", target: sa + "../token", status: 404},
		{name: "trailing dot", target: "/computeMetadata/v1/project/project-id/.", status: 404},
		{name: "huge query", target: sa + "default/token?x=" + strings.Repeat("a", MaxQuery), status: 400},
		{name: "too many scopes", target: sa + "default/token?scopes=" + scopeList(MaxScopes+1), status: 400, contains: "scopes"},
		{name: "as many scopes as allowed", target: sa + "default/token?scopes=" + scopeList(MaxScopes), status: 200},
		{name: "a huge scope", target: sa + "default/token?scopes=" + strings.Repeat("s", MaxScopeLen+1), status: 400},
		{name: "a scope with a control character", target: sa + "default/token?scopes=a%00b", status: 400},
		{name: "a scope with a bad escape", target: sa + "default/token?scopes=a%zz", status: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, fb := newTest(t, func(fb *fakeBroker, _ *Config) { fb.federated = tc.fed })
			method := tc.method
			if method == "" {
				method = "GET"
			}
			w := do(h, method, tc.target, tc.hdr)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d; body %q", w.Code, tc.status, w.Body)
			}
			if got := w.Header().Values("Metadata-Flavor"); len(got) != 1 || got[0] != "Google" {
				t.Errorf("Metadata-Flavor %q, want [Google]", got)
			}
			if tc.ctype != "" && w.Header().Get("Content-Type") != tc.ctype {
				t.Errorf("Content-Type %q, want %q", w.Header().Get("Content-Type"), tc.ctype)
			}
			if tc.body != "" && w.Body.String() != tc.body {
				t.Errorf("body %q, want %q", w.Body, tc.body)
			}
			if !strings.Contains(w.Body.String(), tc.contains) {
				t.Errorf("body %q does not contain %q", w.Body, tc.contains)
			}
			if tc.location != "" && w.Header().Get("Location") != tc.location {
				t.Errorf("Location %q, want %q", w.Header().Get("Location"), tc.location)
			}
			if got := fb.Counted(t, Name); len(got) != 1 || got[tc.status] != 1 {
				t.Errorf("observed %v, want [%d]", got, tc.status)
			}
			if tc.status >= 300 && len(fb.reqs) != 0 {
				t.Errorf("a refused request reached Credentials: %v", fb.reqs)
			}
			for _, a := range fb.addrs {
				if a != netip.MustParseAddr(podAddr) {
					t.Errorf("broker asked about %v, want the peer %v", a, podAddr)
				}
			}
		})
	}
}

func scopeList(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("https://www.googleapis.com/auth/s%d", i)
	}
	return strings.Join(s, ",")
}

// TestRequests checks the broker.Request each path makes: the cloud, the
// kind, the identity (always "", the pod's own, so that default/ and the
// email path share one cache entry) and the canonical scope.
func TestRequests(t *testing.T) {
	cases := []struct {
		target string
		want   broker.Request
	}{
		{sa + "default/token", broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}},
		{sa + testEmail + "/token", broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}},
		{sa + "default/token?scopes=", broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}},
		{sa + "default/token?scopes=,", broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}},
		{sa + "default/token?scopes=b,a", broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: "a b"}},
		{sa + "default/identity?audience=aud1&format=full", broker.Request{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "aud1"}},
		{sa + testEmail + "/identity?format=standard&audience=aud1", broker.Request{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "aud1"}},
	}
	for _, tc := range cases {
		t.Run(tc.target, func(t *testing.T) {
			h, fb := newTest(t, nil)
			if w := do(h, "GET", tc.target, nil); w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if len(fb.reqs) != 1 || fb.reqs[0] != tc.want {
				t.Errorf("requests %+v, want [%+v]", fb.reqs, tc.want)
			}
		})
	}
}

// TestScopeSpellings: every spelling of one scope set is one Request, so a
// pod cannot fill its share of the cache with spellings.
func TestScopeSpellings(t *testing.T) {
	const a, b, c = "https://www.googleapis.com/auth/a", "https://www.googleapis.com/auth/b", "https://www.googleapis.com/auth/c"
	esc := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, ":", "%3A"), "/", "%2F") }
	spellings := []string{
		a + "," + b + "," + c,
		c + "," + b + "," + a,
		b + "," + a + "," + c + "," + a + "," + b,
		"," + a + ",," + b + "," + c + ",",
		a + "%2C" + b + "%2C" + c,
		esc(a) + "," + esc(c) + "," + esc(b),
		a + "+" + b + "+" + c,
		a + "%20" + c + "," + b,
		strings.Repeat(a+","+b+","+c+",", 20),
	}
	h, fb := newTest(t, nil)
	for _, s := range spellings {
		if w := do(h, "GET", sa+"default/token?scopes="+s+"&scopes=ignored", nil); w.Code != 200 {
			t.Fatalf("%s: status %d: %s", s, w.Code, w.Body)
		}
	}
	want := broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: a + " " + b + " " + c}
	for i, r := range fb.reqs {
		if r != want {
			t.Errorf("spelling %q made %+v, want %+v", spellings[i], r, want)
		}
	}
}

func TestCanonicalScopes(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{in: "", want: ""},
		{in: "a", want: "a"},
		{in: " a ", want: "a"},
		{in: "b,a,b", want: "a b"},
		{in: "b a", want: "a b"},
		{in: scopeList(MaxScopes) + "," + scopeList(MaxScopes), want: strings.ReplaceAll(scopeListSorted(MaxScopes), ",", " ")},
		{in: scopeList(MaxScopes + 1), err: true},
		{in: strings.Repeat("x", MaxScopeLen), want: strings.Repeat("x", MaxScopeLen)},
		{in: strings.Repeat("x", MaxScopeLen+1), err: true},
		{in: "a,\tb", err: true},
		{in: "a,é", err: true},
	} {
		got, _, err := canonicalScopes(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("canonicalScopes(%.40q) = %.40q, %v; want %.40q, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func scopeListSorted(n int) string {
	s := strings.Split(scopeList(n), ",")
	// s0, s1, s10, s11, ... sort as strings
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return strings.Join(s, ",")
}

func TestDefaultScopesConfig(t *testing.T) {
	h, fb := newTest(t, func(_ *fakeBroker, c *Config) {
		c.DefaultScopes = []string{"https://www.googleapis.com/auth/userinfo.email", "https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/userinfo.email"}
	})
	w := do(h, "GET", sa+"default/scopes", nil)
	if want := "https://www.googleapis.com/auth/cloud-platform\nhttps://www.googleapis.com/auth/userinfo.email\n"; w.Body.String() != want {
		t.Errorf("scopes %q, want %q", w.Body, want)
	}
	do(h, "GET", sa+"default/token", nil)
	if want := "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email"; fb.reqs[0].Scope != want {
		t.Errorf("default token scope %q, want %q", fb.reqs[0].Scope, want)
	}
}

func TestNewRefuses(t *testing.T) {
	fb := &fakeBroker{clock: clocktesting.NewFakePassiveClock(t0)}
	for name, cfg := range map[string]Config{
		"no broker":          {ProjectID: testProject},
		"no project":         {Broker: fb},
		"project with slash": {Broker: fb, ProjectID: "a/b"},
		"project with space": {Broker: fb, ProjectID: "a b"},
		"numeric not digits": {Broker: fb, ProjectID: testProject, NumericProjectID: "12a"},
		"bad default scope":  {Broker: fb, ProjectID: testProject, DefaultScopes: []string{"a\nb"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	h, err := New(Config{Broker: fb, ProjectID: testProject})
	if err != nil {
		t.Fatal(err)
	}
	if w := do(h, "GET", "/computeMetadata/v1/project/numeric-project-id", nil); w.Code != 404 {
		t.Errorf("numeric project id unset: status %d, want 404", w.Code)
	}
}

// TestFailures maps each failure class to its status, with Retry-After
// where it applies and a body naming the code and message, from Identity
// and from Credentials alike; the failure is logged once.
func TestFailures(t *testing.T) {
	secretErr := errors.New("upstream said: subject_token=eyJhbGciOi.SECRET")
	cases := []struct {
		f          broker.Failure
		status     int
		retryAfter string
	}{
		{broker.Failure{Class: broker.Unavailable, Code: "ServiceUnavailable", Message: "STS is failing", RetryAfter: 2500 * time.Millisecond}, 503, "3"},
		{broker.Failure{Class: broker.Unavailable, Code: "PodNotIdentified", Message: "no pod has this address"}, 503, "1"},
		{broker.Failure{Class: broker.Throttled, Code: "Throttled", Message: "slow down", RetryAfter: 5 * time.Second}, 429, "5"},
		{broker.Failure{Class: broker.Throttled, Code: "Throttled", Message: "slow down"}, 429, ""},
		{broker.Failure{Class: broker.Refused, Code: "DefaultServiceAccount", Message: "the default ServiceAccount gets nothing"}, 403, ""},
		{broker.Failure{Class: broker.Invalid, Code: "InvalidRole", Message: "the annotation is not an email"}, 400, ""},
		{broker.Failure{Class: 0, Code: "Weird", Message: "unknown class"}, 503, "1"},
	}
	for _, tc := range cases {
		for _, target := range []string{sa + "default/token", sa + "default/identity?audience=a", sa + "default/email", sa, sa + testEmail + "/token"} {
			t.Run(tc.f.Code+" "+target, func(t *testing.T) {
				h, fb := newTest(t, func(fb *fakeBroker, c *Config) {
					fb.identityErr, fb.credErr = secretErr, secretErr
					fb.Classify = func(err error) broker.Failure {
						if err != secretErr {
							t.Errorf("classify got %v", err)
						}
						return tc.f
					}
				})
				w := do(h, "GET", target, nil)
				if w.Code != tc.status {
					t.Fatalf("status %d, want %d", w.Code, tc.status)
				}
				if got := w.Header().Get("Retry-After"); got != tc.retryAfter {
					t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
				}
				if want := tc.f.Code + ": " + tc.f.Message + "\n"; w.Body.String() != want {
					t.Errorf("body %q, want %q", w.Body, want)
				}
				if w.Header().Get("Metadata-Flavor") != "Google" || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
					t.Errorf("headers %v", w.Header())
				}
				if len(fb.Logged()) != 1 || fb.Logged()[0] != tc.f {
					t.Errorf("logged %+v, want [%+v]", fb.Logged(), tc.f)
				}
			})
		}
	}
}

// The broker itself is what the surface consumes.
var _ Broker = (*broker.Broker)(nil)

// TestDefaultClassifyIsRetryable: by default the broker's Classify maps
// errors; an unknown error is a 503 that names nothing of the error.
func TestDefaultClassifyIsRetryable(t *testing.T) {
	h, _ := newTest(t, func(fb *fakeBroker, _ *Config) { fb.credErr = errors.New("token SECRET") })
	w := do(h, "GET", sa+"default/token", nil)
	if w.Code != 503 || strings.Contains(w.Body.String(), "SECRET") || w.Header().Get("Retry-After") == "" {
		t.Errorf("status %d, body %q, headers %v", w.Code, w.Body, w.Header())
	}
}

// TestExpiresIn: whole seconds left by the injected clock, rounded down,
// never 0: a token with under a second left is a retryable 503.
func TestExpiresIn(t *testing.T) {
	for _, tc := range []struct {
		life   time.Duration
		status int
		want   int64
	}{
		{time.Hour, 200, 3600},
		{time.Hour - time.Millisecond, 200, 3599},
		{90*time.Second + 999*time.Millisecond, 200, 90},
		{time.Second, 200, 1},
		{999 * time.Millisecond, 503, 0},
		{-time.Minute, 503, 0},
	} {
		h, fb := newTest(t, func(fb *fakeBroker, _ *Config) { fb.lifetime = tc.life })
		_ = fb
		w := do(h, "GET", sa+"default/token", nil)
		if w.Code != tc.status {
			t.Fatalf("life %v: status %d, want %d", tc.life, w.Code, tc.status)
		}
		if tc.status != 200 {
			continue
		}
		var tok struct {
			AccessToken string `json:"access_token"`
			ExpiresIn   int64  `json:"expires_in"`
			TokenType   string `json:"token_type"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &tok); err != nil {
			t.Fatal(err)
		}
		if tok.ExpiresIn != tc.want || tok.TokenType != "Bearer" || tok.AccessToken == "" {
			t.Errorf("life %v: %+v, want expires_in %d", tc.life, tok, tc.want)
		}
	}
}

// TestClockAdvances: expires_in follows the clock, not the fetch time.
func TestClockAdvances(t *testing.T) {
	h, fb := newTest(t, nil)
	fixed := &fixedBroker{fakeBroker: fb, exp: t0.Add(time.Hour)}
	h.b = fixed
	fb.clock.SetTime(t0.Add(20 * time.Minute))
	w := do(h, "GET", sa+"default/token", nil)
	if !strings.Contains(w.Body.String(), `"expires_in":2400,`) {
		t.Errorf("body %s, want expires_in 2400", w.Body)
	}
}

type fixedBroker struct {
	*fakeBroker
	exp time.Time
}

func (f *fixedBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return f.Finish(f.Credentials(ctx, addr, req))
}

func (f *fixedBroker) Credentials(context.Context, netip.Addr, broker.Request) (broker.Answer, error) {
	return broker.Answer{Identity: testEmail, Credentials: &exchange.Credentials{
		Kind: exchange.KindAccessToken, AccessToken: "tok", Expiration: f.exp}}, nil
}

// TestIdentityChangedUnderneath: the email path names the pod's account,
// but by the time the token comes the annotation names another: 404, the
// token is not served under the wrong name.
func TestIdentityChangedUnderneath(t *testing.T) {
	other := "other@my-project.iam.gserviceaccount.com"
	h, _ := newTest(t, func(fb *fakeBroker, _ *Config) { fb.answerIdentity = &other })
	for _, target := range []string{sa + testEmail + "/token", sa + testEmail + "/identity?audience=a"} {
		if w := do(h, "GET", target, nil); w.Code != 404 || strings.Contains(w.Body.String(), testToken) {
			t.Errorf("%s: status %d, body %q", target, w.Code, w.Body)
		}
	}
	// default/ serves whatever the pod's identity is now.
	if w := do(h, "GET", sa+"default/token", nil); w.Code != 200 {
		t.Errorf("default/token: status %d", w.Code)
	}
}

func TestNoCredentials(t *testing.T) {
	h, fb := newTest(t, nil)
	h.b = &emptyBroker{fb}
	for _, target := range []string{sa + "default/token", sa + "default/identity?audience=a"} {
		if w := do(h, "GET", target, nil); w.Code != 500 {
			t.Errorf("%s: status %d, want 500", target, w.Code)
		}
	}
}

type emptyBroker struct{ *fakeBroker }

func (e emptyBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return e.Finish(e.Credentials(ctx, addr, req))
}

func (emptyBroker) Credentials(context.Context, netip.Addr, broker.Request) (broker.Answer, error) {
	return broker.Answer{Identity: testEmail, Credentials: &exchange.Credentials{}}, nil
}

// TestDefaultPathNeedsNoIdentityLookup: default/token and default/identity
// go straight to Credentials (one pod resolution on the hot path); the email
// path and the metadata leaves resolve the identity.
func TestDefaultPathNeedsNoIdentityLookup(t *testing.T) {
	for target, want := range map[string]int{
		sa + "default/token":                     0,
		sa + "default/identity?audience=a":       1, // federated pods get no identity token
		sa + testEmail + "/token":                1,
		sa + "default/email":                     1,
		sa + "default/?recursive=true":           1,
		"/computeMetadata/v1/project/project-id": 0,
		sa + "default/key":                       0, // unknown leaves are refused before any look-up
		sa + testEmail + "/token/":               0,
	} {
		h, fb := newTest(t, nil)
		do(h, "GET", target, nil)
		if fb.identityCalls != want {
			t.Errorf("%s: %d Identity calls, want %d", target, fb.identityCalls, want)
		}
	}
}

func TestIPv4MappedPeer(t *testing.T) {
	h, fb := newTest(t, nil)
	r := httptest.NewRequest("GET", sa+"default/token", nil)
	r.RemoteAddr = "[::ffff:" + podAddr + "]:4000"
	r.Header.Set("Metadata-Flavor", "Google")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || len(fb.addrs) != 1 || fb.addrs[0] != netip.MustParseAddr(podAddr) {
		t.Errorf("status %d, addrs %v", w.Code, fb.addrs)
	}
	r.RemoteAddr = "garbage"
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 400 {
		t.Errorf("unparsable peer: status %d, want 400", w.Code)
	}
}

// TestTokenHitAllocations: the cache-hit path for a token with the default
// scopes allocates nothing in the surface.
func TestTokenHitAllocations(t *testing.T) {
	fb := &fakeBroker{clock: clocktesting.NewFakePassiveClock(t0)}
	h, err := New(Config{Broker: surfacetest.Hit{Answer: broker.Answer{Identity: testEmail, Credentials: &exchange.Credentials{
		Kind: exchange.KindAccessToken, AccessToken: testToken, Expiration: t0.Add(time.Hour)}}},
		ProjectID: testProject, Clock: fb.clock})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", sa+"default/token", nil)
	r.RemoteAddr = podAddr + ":4000"
	r.Header.Set("Metadata-Flavor", "Google")
	w := surfacetest.NewDiscard()
	h.ServeHTTP(w, r) // fills the header map and the buffer pool
	if w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	if n := testing.AllocsPerRun(200, func() { h.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("%v allocations per token hit, want 0", n)
	}
}

// TestIdentityHitAllocations: an identity token for an audience the
// client escaped, and an access token for escaped scopes, are answered
// from a hit without an allocation in the surface.
func TestIdentityHitAllocations(t *testing.T) {
	fb := &fakeBroker{clock: clocktesting.NewFakePassiveClock(t0)}
	h, err := New(Config{Broker: surfacetest.Hit{Answer: broker.Answer{Identity: testEmail, Credentials: &exchange.Credentials{
		Kind: exchange.KindIDToken, IDToken: "eyJ.id.sig", AccessToken: testToken, Expiration: t0.Add(time.Hour)}}},
		ProjectID: testProject, Clock: fb.clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{sa + "default/identity?audience=https%3A%2F%2Fsvc.example.com%2F&format=full",
		sa + "default/token?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"} {
		r := httptest.NewRequest("GET", target, nil)
		r.RemoteAddr = podAddr + ":4000"
		r.Header.Set("Metadata-Flavor", "Google")
		w := surfacetest.NewDiscard()
		h.ServeHTTP(w, r) // fills the header map, the buffer pool and the values seen
		if w.Code != 200 {
			t.Fatalf("%s: status %d", target, w.Code)
		}
		if n := testing.AllocsPerRun(200, func() { h.ServeHTTP(w, r) }); n != 0 {
			t.Errorf("%s: %v allocations per hit, want 0", target, n)
		}
	}
}

func BenchmarkTokenHit(b *testing.B) {
	h, err := New(Config{Broker: surfacetest.Hit{Answer: broker.Answer{Identity: testEmail, Credentials: &exchange.Credentials{
		Kind: exchange.KindAccessToken, AccessToken: testToken, Expiration: time.Now().Add(time.Hour)}}},
		ProjectID: testProject})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest("GET", sa+"default/token", nil)
	r.RemoteAddr = podAddr + ":4000"
	r.Header.Set("Metadata-Flavor", "Google")
	w := surfacetest.NewDiscard()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}

// TestPrefetchRequestIsTheSurfaces: what the agent prefetches with
// TokenRequest is the very Request the surface makes for a token of the
// default scopes, asked for with or without ?scopes=.
func TestPrefetchRequestIsTheSurfaces(t *testing.T) {
	scopes := []string{DefaultScope, "https://www.googleapis.com/auth/userinfo.email"}
	want, err := TokenRequest(scopes)
	if err != nil {
		t.Fatal(err)
	}
	h, fb := newTest(t, func(_ *fakeBroker, c *Config) { c.DefaultScopes = scopes })
	do(h, "GET", sa+"default/token", nil)
	do(h, "GET", sa+testEmail+"/token?scopes="+scopes[1]+","+scopes[0], nil)
	if len(fb.reqs) != 2 || fb.reqs[0] != want || fb.reqs[1] != want {
		t.Errorf("surface requests %+v, prefetched %+v", fb.reqs, want)
	}
}

// TestWriteError: refusals written in front of the surface (the guard) look
// like the surface's own.
func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	if got := WriteError(w, http.StatusTooManyRequests, "Throttled", "slow down", 1500*time.Millisecond); got != 429 || w.Code != 429 {
		t.Fatalf("status %d / %d", got, w.Code)
	}
	if w.Header().Get("Metadata-Flavor") != "Google" || w.Header().Get("Retry-After") != "2" ||
		w.Header().Get("Content-Type") != "text/plain; charset=utf-8" || w.Body.String() != "Throttled: slow down\n" {
		t.Errorf("headers %v body %q", w.Header(), w.Body)
	}
	w = httptest.NewRecorder()
	WriteError(w, http.StatusForbidden, "ForwardedRequest", "no", 0)
	if w.Header().Get("Retry-After") != "" || w.Header().Get("Metadata-Flavor") != "Google" {
		t.Errorf("headers %v", w.Header())
	}
}

// The guard in front of the surface writes its refusals with WriteError
// (Metadata-Flavor: Google, this surface's text), and never asks for
// Authorization: no Google client sends it, and Python's detection is a
// bare GET /.
func TestGuardRules(t *testing.T) {
	r := GuardRules()
	if r.RequireAuthorization {
		t.Fatal("the GCE surface requires Authorization, which no Google client sends")
	}
	w := httptest.NewRecorder()
	r.WriteError(w, http.StatusTooManyRequests, "Throttled", "slow down", time.Second)
	if w.Header().Get("Metadata-Flavor") != "Google" || w.Body.String() != "Throttled: slow down\n" || w.Header().Get("Retry-After") != "1" {
		t.Errorf("headers %v body %q", w.Header(), w.Body)
	}
}

// TestTokenlessAnswerIsAnInternalError: a broker answer without the token
// a path asked for is the agent's own fault, answered 500 in the
// surface's text format, and never a 200 with an empty token.
func TestTokenlessAnswerIsAnInternalError(t *testing.T) {
	for target, want := range map[string]string{
		sa + "default/token":               CodeInternal + ": the broker returned no access token\n",
		sa + testEmail + "/token":          CodeInternal + ": the broker returned no access token\n",
		sa + "default/identity?audience=a": CodeInternal + ": the broker returned no identity token\n",
	} {
		h, _ := newTest(t, func(fb *fakeBroker, _ *Config) { fb.tokenless = true })
		w := do(h, "GET", target, nil)
		if w.Code != http.StatusInternalServerError || w.Body.String() != want || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: %d %q (%s), want 500 %q", target, w.Code, w.Body.String(), w.Header().Get("Content-Type"), want)
		}
	}
}
