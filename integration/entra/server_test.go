//go:build integration

// The peer against a real kube-apiserver: pod-bound TokenRequest tokens
// verified through the API server's own discovery and JWKS, exchanged by the
// agent's own Azure exchanger (pkg/exchange/azure), matched against
// federated identity credentials, and refused with Entra's codes when
// their issuer, subject, audience, signature, expiry or pod is wrong.
package entra_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/credbroker/agent/integration/entra"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/peer/peertest"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/azure"
)

const (
	ns       = peertest.Namespace
	tenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	tenant2  = "contoso.onmicrosoft.com"
	clientA  = "aaaaaaaa-1111-2222-3333-444444444444"
	clientB  = "bbbbbbbb-1111-2222-3333-444444444444"
	clientC  = "cccccccc-1111-2222-3333-444444444444" // exists, no credentials
	subjectA = "system:serviceaccount:team:app-a"
	subjectB = "system:serviceaccount:team:app-b"
	vault    = "https://vault.azure.net"
)

// world is the shared test world (peertest) and the peer under test.
type world struct {
	*peertest.World
	s *entra.Server
}

func setup(t *testing.T) *world {
	t.Helper()
	w := &world{World: peertest.NewWorld(t)}
	s, err := entra.New(entra.Config{
		Issuer:     w.CP.Issuer,
		HTTPClient: w.CP.AdminHTTPClient(),
		Credentials: map[entra.App][]entra.FederatedCredential{
			{Tenant: tenant, ClientID: clientA}: {{Issuer: w.CP.Issuer, Subject: subjectA}},
			{Tenant: tenant, ClientID: clientB}: {{Issuer: w.CP.Issuer, Subject: subjectB, Audiences: []string{"api://custom"}}},
			{Tenant: tenant, ClientID: clientC}: nil,
		},
		Tenants: []string{tenant2},
		PodUID:  w.PodUID,
		Log:     w.Logger(),
		Now:     w.Now,
	})
	s = peertest.Started(t, s, err)
	w.s = s
	return w
}

func (w *world) podToken(pod *corev1.Pod) exchange.Secret { return w.Token(pod, azure.TokenAudience) }

func (w *world) exchanger(mod func(*azure.Config)) *azure.Exchanger {
	w.T.Helper()
	cfg := azure.Config{AuthorityHost: w.s.URL()}
	if mod != nil {
		mod(&cfg)
	}
	x, err := azure.New(cfg)
	if err != nil {
		w.T.Fatal(err)
	}
	return x
}

func req(tok exchange.Secret, client, tnt, resource string) exchange.Request {
	return exchange.Request{Token: tok, Want: exchange.KindAccessToken, Role: client, Tenant: tnt, Scopes: []string{resource}}
}

var xerr = peertest.XErr

func TestExchangeAndLookup(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	x := w.exchanger(nil)

	start := time.Now()
	c, err := x.Exchange(ctx, req(w.podToken(w.PodA), clientA, tenant, vault))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(c.Expiration); d < time.Hour-5*time.Second || d > time.Hour+time.Second {
		t.Errorf("token expires in %v, want about an hour", d)
	}
	if c.TokenType != "Bearer" || c.Kind != exchange.KindAccessToken {
		t.Errorf("credentials %+v", c)
	}
	got, ok := w.s.Lookup(c.AccessToken.Reveal())
	want := entra.Issued{
		Tenant: tenant, ClientID: clientA, Scope: vault + "/.default", Resource: vault,
		Subject: subjectA, Issuer: w.CP.Issuer, Namespace: ns, ServiceAccount: "app-a",
		PodName: "pod-a", PodUID: string(w.PodA.UID),
	}
	if !ok || got.IssuedAt.Before(start.Truncate(time.Second)) || !got.Expiration.Equal(got.IssuedAt.Add(time.Hour)) {
		t.Errorf("Lookup = %+v, %v", got, ok)
	}
	got.IssuedAt, got.Expiration = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("Lookup\n got %+v\nwant %+v", got, want)
	}
	m, err := entra.Introspect(ctx, nil, w.s.URL(), c.AccessToken.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	if m["active"] != true || m["pod_uid"] != string(w.PodA.UID) || m["sub"] != subjectA || m["appid"] != clientA ||
		m["tid"] != tenant || m["scope"] != vault+"/.default" || m["pod"] != ns+"/pod-a" {
		t.Errorf("introspection %v", m)
	}
	if m, _ := entra.Introspect(ctx, nil, w.s.URL(), "not-a-token"); m["active"] != false {
		t.Errorf("introspection of an unknown token %v", m)
	}
	if _, ok := w.s.Lookup("not-a-token"); ok {
		t.Error("Lookup found an unknown token")
	}

	// Pod B, its own application with a custom audience.
	cb, err := x.Exchange(ctx, req(w.Token(w.PodB, "api://custom"), clientB, tenant, "https://storage.azure.com/.default"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := w.s.Lookup(cb.AccessToken.Reveal()); got.PodUID != string(w.PodB.UID) || got.ClientID != clientB || got.Resource != "https://storage.azure.com" {
		t.Errorf("pod B's token: %+v", got)
	}
	if cb.AccessToken == c.AccessToken {
		t.Error("two pods got the same token")
	}
	if w.s.PodCalls(string(w.PodA.UID)) != 1 || w.s.PodCalls(string(w.PodB.UID)) != 1 {
		t.Errorf("PodCalls A %d B %d", w.s.PodCalls(string(w.PodA.UID)), w.s.PodCalls(string(w.PodB.UID)))
	}

	// Pod B cannot become application A: its subject has no credential there.
	_, err = x.Exchange(ctx, req(w.podToken(w.PodB), clientA, tenant, vault))
	if xe := xerr(t, err); xe.Kind != exchange.Denied || xe.Code != "AADSTS70021" || !strings.Contains(err.Error(), subjectB) {
		t.Errorf("pod B as application A: %v, want Denied AADSTS70021 naming %s", err, subjectB)
	}

	// Allow and Revoke change the table.
	app := entra.App{Tenant: tenant, ClientID: clientA}
	w.s.Allow(app, entra.FederatedCredential{Issuer: w.CP.Issuer, Subject: subjectB})
	if _, err := x.Exchange(ctx, req(w.podToken(w.PodB), clientA, tenant, vault)); err != nil {
		t.Errorf("after Allow: %v", err)
	}
	w.s.Revoke(app, subjectB)
	if _, err := x.Exchange(ctx, req(w.podToken(w.PodB), clientA, tenant, vault)); err == nil {
		t.Error("after Revoke: no error")
	}
	// A tenant ID is case-insensitive, so is a client ID.
	if _, err := x.Exchange(ctx, req(w.podToken(w.PodA), strings.ToUpper(clientA), strings.ToUpper(tenant), vault)); err != nil {
		t.Errorf("upper-case GUIDs: %v", err)
	}

	if got := w.s.Counts(); got.Token != 6 || got.Issued != 4 || got.NoMatch != 2 {
		t.Errorf("Counts = %+v, want 6 calls, 4 issued, 2 no match", got)
	}
	assertNoSecretsLogged(t, w)
}

// forge signs pod A's claims, changed by mutate, with the API server's
// own key (peertest.Forge).
func forge(t *testing.T, w *world, mutate func(m map[string]any)) exchange.Secret {
	t.Helper()
	return peertest.Forge(t, w.CP, w.podToken(w.PodA), mutate)
}

var sign = peertest.Sign

func TestRejectedAssertions(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	x := w.exchanger(nil)
	other := peertest.NewKey(t)
	// A forgery that differs from a real token only in its signature.
	forged := func() exchange.Secret { return peertest.Resigned(t, other, w.podToken(w.PodA)) }
	unbound := w.Unbound("app-a", azure.TokenAudience)
	w.s.Allow(entra.App{Tenant: tenant, ClientID: clientA}, entra.FederatedCredential{Issuer: "https://elsewhere.example", Subject: subjectA})

	for _, tc := range []struct {
		name  string
		token exchange.Secret
		kind  exchange.ErrorKind
		code  string
	}{
		{"another audience", w.Token(w.PodA, "sts.amazonaws.com"), exchange.Denied, "AADSTS700212"},
		{"the API server's audience", w.Token(w.PodA, w.CP.Issuer), exchange.Denied, "AADSTS700212"},
		{"another issuer", forge(t, w, func(m map[string]any) { m["iss"] = "https://evil.example" }), exchange.Denied, "AADSTS700211"},
		{"issuer with a trailing slash", forge(t, w, func(m map[string]any) { m["iss"] = w.CP.Issuer + "/" }), exchange.Denied, "AADSTS700211"},
		{"another subject", forge(t, w, func(m map[string]any) { m["sub"] = subjectB }), exchange.Denied, "AADSTS70021"},
		{"subject in other case", forge(t, w, func(m map[string]any) { m["sub"] = strings.ToUpper(subjectA) }), exchange.Denied, "AADSTS7002138"},
		{"credential's issuer whose keys are elsewhere", forge(t, w, func(m map[string]any) { m["iss"] = "https://elsewhere.example" }), exchange.InvalidToken, "AADSTS700027"},
		{"signed by another key", forged(), exchange.InvalidToken, "AADSTS700027"},
		{"unknown key id", sign(t, other, "not-a-kid", map[string]any{"iss": w.CP.Issuer, "sub": subjectA, "aud": azure.TokenAudience}), exchange.InvalidToken, "AADSTS700027"},
		{"expired", forge(t, w, func(m map[string]any) { m["exp"] = time.Now().Add(-time.Second).Unix() }), exchange.InvalidToken, "AADSTS700024"},
		{"not yet valid", forge(t, w, func(m map[string]any) { m["nbf"] = time.Now().Add(time.Hour).Unix() }), exchange.InvalidToken, "AADSTS700024"},
		{"no exp", forge(t, w, func(m map[string]any) { delete(m, "exp") }), exchange.InvalidToken, "AADSTS700024"},
		{"not bound to a pod", unbound, exchange.InvalidToken, "AADSTS50013"},
		{"pod UID of another pod", forge(t, w, func(m map[string]any) {
			m["kubernetes.io"].(map[string]any)["pod"].(map[string]any)["uid"] = string(w.PodB.UID)
		}), exchange.InvalidToken, "AADSTS50013"},
		{"not a JWT", "not-a-jwt", exchange.InvalidToken, "AADSTS50027"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := x.Exchange(ctx, req(tc.token, clientA, tenant, vault))
			if xe := xerr(t, err); xe.Kind != tc.kind || xe.Code != tc.code {
				t.Errorf("error %v, want %v %s", err, tc.kind, tc.code)
			}
		})
	}
	t.Run("application without credentials", func(t *testing.T) {
		_, err := x.Exchange(ctx, req(w.podToken(w.PodA), clientC, tenant, vault))
		if xe := xerr(t, err); xe.Kind != exchange.Denied || xe.Code != "AADSTS70025" {
			t.Errorf("error %v, want Denied AADSTS70025", err)
		}
	})
	w.RunStaleTokens(t, w.podToken, func(tok exchange.Secret) error {
		_, err := x.Exchange(ctx, req(tok, clientA, tenant, vault))
		return err
	}, func(t *testing.T, err error) {
		if xe := xerr(t, err); xe.Kind != exchange.InvalidToken || xe.Code != "AADSTS700024" {
			t.Errorf("error %v, want InvalidToken AADSTS700024", err)
		}
	})
	t.Run("unknown tenant", func(t *testing.T) {
		_, err := x.Exchange(ctx, req(w.podToken(w.PodA), clientA, "11111111-0000-0000-0000-000000000000", vault))
		if xe := xerr(t, err); xe.Kind != exchange.InvalidRequest || xe.Code != "AADSTS90002" {
			t.Errorf("error %v, want InvalidRequest AADSTS90002", err)
		}
	})
	t.Run("application of another tenant", func(t *testing.T) {
		_, err := x.Exchange(ctx, req(w.podToken(w.PodA), clientA, tenant2, vault))
		// A denial (retried through the broker's window, then 403), not a
		// 400: Entra also answers it while a new application replicates.
		if xe := xerr(t, err); xe.Kind != exchange.Denied || xe.Code != "AADSTS700016" {
			t.Errorf("error %v, want Denied AADSTS700016", err)
		}
	})
	if got := w.s.Counts(); got.Issued != 0 || got.NoMatch != 7 || got.InvalidToken != 12 || got.BadRequest != 2 {
		t.Errorf("Counts = %+v, want 0 issued, 7 no match, 12 invalid, 2 bad requests", got)
	}
	assertNoSecretsLogged(t, w)
}

// post sends a raw form to the peer and returns the status and the
// decoded answer.
func post(t *testing.T, s *entra.Server, path, contentType string, form url.Values) (int, http.Header, map[string]any) {
	t.Helper()
	r, _ := http.NewRequest(http.MethodPost, strings.TrimSuffix(s.URL(), "/")+path, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("answer %q is not JSON", b)
	}
	return resp.StatusCode, resp.Header, m
}

// TestRequestChecks sends raw forms, one field wrong at a time, and checks
// the Entra-shaped answer.
func TestRequestChecks(t *testing.T) {
	w := setup(t)
	good := func() url.Values {
		return url.Values{
			"grant_type":            {"client_credentials"},
			"client_id":             {clientA},
			"scope":                 {vault + "/.default"},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
			"client_assertion":      {w.podToken(w.PodA).Reveal()},
		}
	}
	const form = "application/x-www-form-urlencoded"
	path := "/" + tenant + "/oauth2/v2.0/token"
	if status, _, m := post(t, w.s, path, form, good()); status != 200 || m["token_type"] != "Bearer" ||
		m["expires_in"] != float64(3600) || m["ext_expires_in"] != float64(3600) || m["access_token"] == "" {
		t.Fatalf("good request: %d %v", status, m)
	}
	for _, tc := range []struct {
		name  string
		mod   func(url.Values)
		ct    string
		path  string
		oauth string
		code  float64
	}{
		{"no grant_type", func(v url.Values) { v.Del("grant_type") }, form, path, "invalid_request", 900144},
		{"other grant_type", func(v url.Values) { v.Set("grant_type", "password") }, form, path, "unsupported_grant_type", 70003},
		{"no client_id", func(v url.Values) { v.Del("client_id") }, form, path, "invalid_request", 900144},
		{"no scope", func(v url.Values) { v.Del("scope") }, form, path, "invalid_request", 900144},
		{"scope without .default", func(v url.Values) { v.Set("scope", vault) }, form, path, "invalid_scope", 1002012},
		{"two scopes", func(v url.Values) { v.Set("scope", vault+"/.default https://storage.azure.com/.default") }, form, path, "invalid_scope", 70011},
		{"no assertion type", func(v url.Values) { v.Del("client_assertion_type") }, form, path, "invalid_request", 900144},
		{"other assertion type", func(v url.Values) { v.Set("client_assertion_type", "jwt") }, form, path, "invalid_request", 700023},
		{"no assertion", func(v url.Values) { v.Del("client_assertion") }, form, path, "invalid_request", 900144},
		{"duplicated client_id", func(v url.Values) { v.Add("client_id", clientB) }, form, path, "invalid_request", 90015},
		{"JSON body", func(url.Values) {}, "application/json", path, "invalid_request", 900144},
		{"unknown client", func(v url.Values) { v.Set("client_id", "dddddddd-1111-2222-3333-444444444444") }, form, path, "unauthorized_client", 700016},
		{"unknown tenant", func(url.Values) {}, form, "/contoso.com/oauth2/v2.0/token", "invalid_request", 90002},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good()
			tc.mod(v)
			status, hdr, m := post(t, w.s, tc.path, tc.ct, v)
			desc, _ := m["error_description"].(string)
			codes, _ := m["error_codes"].([]any)
			if status != 400 || m["error"] != tc.oauth || len(codes) != 1 || codes[0] != tc.code ||
				!strings.HasPrefix(desc, "AADSTS") || !strings.Contains(desc, "Trace ID: ") || m["correlation_id"] == nil ||
				!strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
				t.Errorf("answer %d %v, want 400 %s AADSTS%v", status, m, tc.oauth, tc.code)
			}
		})
	}
	t.Run("resources", func(t *testing.T) {
		s, err := entra.New(entra.Config{Issuer: w.CP.Issuer, HTTPClient: w.CP.AdminHTTPClient(), Resources: []string{vault},
			Credentials: map[entra.App][]entra.FederatedCredential{{Tenant: tenant, ClientID: clientA}: {{Issuer: w.CP.Issuer, Subject: subjectA}}}})
		s = peertest.Started(t, s, err)
		x, _ := azure.New(azure.Config{AuthorityHost: s.URL()})
		if _, err := x.Exchange(context.Background(), req(w.podToken(w.PodA), clientA, tenant, vault)); err != nil {
			t.Errorf("listed resource: %v", err)
		}
		_, err = x.Exchange(context.Background(), req(w.podToken(w.PodA), clientA, tenant, "https://storage.azure.com"))
		if xe := xerr(t, err); xe.Kind != exchange.InvalidRequest || xe.Code != "AADSTS500011" {
			t.Errorf("unlisted resource: %v, want InvalidRequest AADSTS500011", err)
		}
	})
	t.Run("GET", func(t *testing.T) {
		resp, err := http.Get(strings.TrimSuffix(w.s.URL(), "/") + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET: %d", resp.StatusCode)
		}
	})
	t.Run("SetLifetime", func(t *testing.T) {
		w.s.SetLifetime(2 * time.Second)
		defer w.s.SetLifetime(0)
		x := w.exchanger(nil)
		c, err := x.Exchange(context.Background(), req(w.podToken(w.PodA), clientA, tenant, vault))
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(c.Expiration); d > 2*time.Second || d < -time.Second {
			t.Errorf("expires in %v, want about 2s", d)
		}
		w.Offset.Store(int64(3 * time.Second))
		defer w.Offset.Store(0)
		if m, _ := entra.Introspect(context.Background(), nil, w.s.URL(), c.AccessToken.Reveal()); m["active"] != false {
			t.Errorf("expired token introspects as %v", m)
		}
	})
	assertNoSecretsLogged(t, w)
}

func TestFaults(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	x := w.exchanger(nil)
	access := func() error {
		_, err := x.Exchange(ctx, req(w.podToken(w.PodA), clientA, tenant, vault))
		return err
	}
	for _, tc := range []struct {
		status int
		kind   exchange.ErrorKind
		code   string
	}{
		{503, exchange.Transient, "AADSTS90033"},
		{500, exchange.Transient, "AADSTS50000"},
		{502, exchange.Transient, "server_error"},
		{429, exchange.Throttled, "AADSTS90055"},
		{400, exchange.Throttled, "AADSTS50196"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			if err := w.s.SetFault(entra.Fault{Status: tc.status}); err != nil {
				t.Fatal(err)
			}
			defer w.s.SetFault(entra.Fault{})
			err := access()
			if xe := xerr(t, err); xe.Kind != tc.kind || xe.Code != tc.code {
				t.Errorf("error %v, want %v %s", err, tc.kind, tc.code)
			}
		})
	}
	t.Run("Retry-After", func(t *testing.T) {
		if err := w.s.SetFault(entra.Fault{Status: 429}); err != nil {
			t.Fatal(err)
		}
		defer w.s.SetFault(entra.Fault{})
		status, hdr, _ := post(t, w.s, "/"+tenant+"/oauth2/v2.0/token", "application/x-www-form-urlencoded", url.Values{})
		if status != 429 || hdr.Get("Retry-After") == "" {
			t.Errorf("429 fault: %d, Retry-After %q", status, hdr.Get("Retry-After"))
		}
	})
	if c := w.s.Counts(); c.Faulted != 6 || c.Token != 6 || c.Issued != 0 {
		t.Errorf("after status faults, Counts = %+v", c)
	}
	t.Run("introspection is not faulted by default", func(t *testing.T) {
		if err := w.s.SetFault(entra.Fault{Status: 503}); err != nil {
			t.Fatal(err)
		}
		defer w.s.SetFault(entra.Fault{})
		if _, err := entra.Introspect(ctx, nil, w.s.URL(), "x"); err != nil {
			t.Errorf("introspect under a token fault: %v", err)
		}
	})
	peertest.RunTransportFaults(t, peertest.TransportFaults{
		Set: func(f peertest.TransportFault) error {
			return w.s.SetFault(entra.Fault{Latency: f.Latency, Refuse: f.Refuse, Reset: f.Reset})
		},
		Call: access,
		Timeout: func() error {
			y := w.exchanger(func(c *azure.Config) { c.HTTPClient = &http.Client{Timeout: 200 * time.Millisecond} })
			_, err := y.Exchange(ctx, req(w.podToken(w.PodA), clientA, tenant, vault))
			return err
		},
	})
	assertNoSecretsLogged(t, w)
}

func TestHarnessStartEntra(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	ctx := context.Background()
	if _, err := cp.CreateServiceAccount(ctx, ns, "app-a", ""); err != nil {
		t.Fatal(err)
	}
	s, err := cp.StartEntra(ctx, harness.EntraConfig{Addr: "127.0.0.1:0",
		Credentials: map[entra.App][]string{{Tenant: tenant, ClientID: clientA}: {subjectA}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	w := &world{World: &peertest.World{T: t, CP: cp}, s: s}
	pod := w.CreatePod("pod-a", "app-a")
	x := w.exchanger(nil)
	c, err := x.Exchange(ctx, req(w.podToken(pod), clientA, tenant, vault))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(c.AccessToken.Reveal()); got.PodUID != string(pod.UID) || got.ClientID != clientA || got.Subject != subjectA {
		t.Errorf("Lookup = %+v", got)
	}
	tok := w.podToken(pod)
	if err := cp.DeletePod(ctx, ns, pod.Name); err != nil {
		t.Fatal(err)
	}
	_, err = x.Exchange(ctx, req(tok, clientA, tenant, vault))
	if xe := xerr(t, err); xe.Kind != exchange.InvalidToken {
		t.Errorf("deleted pod: %v, want InvalidToken", err)
	}
}

// assertNoSecretsLogged checks the peer's own log against every token it
// received or issued.
func assertNoSecretsLogged(t *testing.T, w *world) {
	t.Helper()
	peertest.AssertNoSecretsLogged(t, w.Log.String(), w.s.Secrets())
}

// TestIssuerUnreachable: when the issuer's keys cannot be fetched the
// answer is a retryable 503, not a verdict on the assertion.
func TestIssuerUnreachable(t *testing.T) {
	const iss = "http://127.0.0.1:1"
	s, err := entra.New(entra.Config{Issuer: iss, HTTPClient: &http.Client{Timeout: 2 * time.Second},
		Credentials: map[entra.App][]entra.FederatedCredential{{Tenant: tenant, ClientID: clientA}: {{Issuer: iss, Subject: subjectA}}}})
	s = peertest.Started(t, s, err)
	key := peertest.NewKey(t)
	tok := sign(t, key, "k1", map[string]any{"iss": iss, "sub": subjectA, "aud": azure.TokenAudience, "exp": time.Now().Add(time.Hour).Unix()})
	x, err := azure.New(azure.Config{AuthorityHost: s.URL()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = x.Exchange(context.Background(), req(tok, clientA, tenant, vault))
	if xe := xerr(t, err); xe.Kind != exchange.Transient || xe.Code != "AADSTS90033" || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("error %v, want Transient AADSTS90033 (503)", err)
	}
	if c := s.Counts(); c.Token != 1 || c.InvalidToken != 0 || c.Issued != 0 {
		t.Errorf("Counts = %+v", c)
	}
}
