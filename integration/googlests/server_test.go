//go:build integration

// The peer against a real kube-apiserver: pod-bound TokenRequest tokens
// verified through the API server's own discovery and JWKS, exchanged by the
// agent's own GCP exchanger (pkg/exchange/gcp), and refused when their
// audience, issuer, expiry, signature or pod is wrong.
package googlests_test

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	corev1 "k8s.io/api/core/v1"

	"github.com/credbroker/agent/integration/googlests"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/peer/peertest"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/gcp"
)

const (
	ns       = peertest.Namespace
	emailA   = "app-a@proj-1.iam.gserviceaccount.com"
	emailB   = "app-b@proj-1.iam.gserviceaccount.com"
	subjectA = "system:serviceaccount:team:app-a"
	subjectB = "system:serviceaccount:team:app-b"
	scopeGCS = "https://www.googleapis.com/auth/devstorage.read_only"
)

// world is the shared test world (peertest) and the peer under test.
type world struct {
	*peertest.World
	s *googlests.Server
}

func setup(t *testing.T) *world {
	t.Helper()
	w := &world{World: peertest.NewWorld(t)}
	s, err := googlests.New(googlests.Config{
		Issuer:        w.CP.Issuer,
		HTTPClient:    w.CP.AdminHTTPClient(),
		Impersonation: map[string][]string{emailA: {subjectA}, emailB: nil},
		PodUID:        w.PodUID,
		Log:           w.Logger(),
		Now:           w.Now,
	})
	s = peertest.Started(t, s, err)
	w.s = s
	return w
}

func (w *world) podToken(pod *corev1.Pod) exchange.Secret {
	return w.Token(pod, gcp.TokenAudience(w.s.Provider()))
}

func (w *world) exchanger(mod func(*gcp.Config)) *gcp.Exchanger {
	w.T.Helper()
	cfg := gcp.Config{Provider: w.s.Provider(), STSEndpoint: w.s.URL(), IAMCredentialsEndpoint: w.s.URL()}
	if mod != nil {
		mod(&cfg)
	}
	x, err := gcp.New(cfg)
	if err != nil {
		w.T.Fatal(err)
	}
	return x
}

var xerr = peertest.XErr

func near(t *testing.T, what string, got time.Time, want time.Duration) {
	t.Helper()
	if d := time.Until(got); d < want-5*time.Second || d > want+time.Second {
		t.Errorf("%s expires in %v, want about %v", what, d, want)
	}
}

func TestExchangeImpersonateAndLookup(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	x := w.exchanger(nil)

	// The pod's own federated principal.
	fed, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodA), Want: exchange.KindAccessToken, Scopes: []string{scopeGCS}})
	if err != nil {
		t.Fatalf("federated: %v", err)
	}
	near(t, "federated token", fed.Expiration, time.Hour)
	got, ok := w.s.Lookup(fed.AccessToken.Reveal())
	want := googlests.Issued{Kind: googlests.Federated, Subject: subjectA, Namespace: ns, PodName: "pod-a", PodUID: string(w.PodA.UID), Scopes: []string{scopeGCS}}
	if !ok || !sameIssued(got, want) {
		t.Errorf("Lookup(federated) = %+v, %v; want %+v", got, ok, want)
	}

	// Impersonated access token for the requested scopes and lifetime.
	at, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodA), Want: exchange.KindAccessToken, Role: emailA, Scopes: []string{scopeGCS}, Duration: 30 * time.Minute})
	if err != nil {
		t.Fatalf("generateAccessToken: %v", err)
	}
	near(t, "impersonated token", at.Expiration, 30*time.Minute)
	got, ok = w.s.Lookup(at.AccessToken.Reveal())
	want = googlests.Issued{Kind: googlests.Impersonated, Subject: subjectA, Namespace: ns, PodName: "pod-a", PodUID: string(w.PodA.UID), Email: emailA, Scopes: []string{scopeGCS}}
	if !ok || !sameIssued(got, want) || !got.Expiration.Equal(at.Expiration) {
		t.Errorf("Lookup(impersonated) = %+v, %v; want %+v expiring at %v", got, ok, want, at.Expiration)
	}

	// Identity token, signed by the peer's key.
	id, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodA), Want: exchange.KindIDToken, Role: emailA, Audience: "https://orders.example"})
	if err != nil {
		t.Fatalf("generateIdToken: %v", err)
	}
	near(t, "identity token", id.Expiration, time.Hour)
	parsed, err := jwt.ParseSigned(id.IDToken.Reveal(), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		jwt.Claims
		Email    string `json:"email"`
		Verified bool   `json:"email_verified"`
		AZP      string `json:"azp"`
	}
	if err := parsed.Claims(w.s.IDTokenKey(), &c); err != nil {
		t.Fatalf("identity token signature: %v", err)
	}
	if c.Issuer != googlests.IDTokenIssuer || !c.Audience.Contains("https://orders.example") || c.Email != emailA || !c.Verified ||
		c.Subject != googlests.UniqueID(emailA) || c.AZP != c.Subject || !c.Expiry.Time().Equal(id.Expiration) {
		t.Errorf("identity token claims %+v", c)
	}
	if got, ok := w.s.Lookup(id.IDToken.Reveal()); !ok || got.Kind != googlests.IDToken || got.PodUID != string(w.PodA.UID) || got.Audience != "https://orders.example" {
		t.Errorf("Lookup(identity token) = %+v, %v", got, ok)
	}

	// Introspection says the same over HTTP.
	ir := introspect(t, w.s, at.AccessToken.Reveal())
	if ir["active"] != true || ir["email"] != emailA || ir["pod_uid"] != string(w.PodA.UID) || ir["sub"] != subjectA || ir["scope"] != scopeGCS {
		t.Errorf("introspect = %v", ir)
	}
	if ir := introspect(t, w.s, "ya29.made-up"); ir["active"] != false {
		t.Errorf("introspect(made-up) = %v", ir)
	}

	// A second pod gets its own principal's token, never the first one's.
	fedB, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodB), Want: exchange.KindAccessToken})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := w.s.Lookup(fedB.AccessToken.Reveal()); got.Subject != subjectB || got.PodUID != string(w.PodB.UID) {
		t.Errorf("pod-b's federated token was minted for %s (pod %s)", got.Subject, got.PodUID)
	}

	// ...and may not impersonate app-a's account, nor one it is not granted.
	for _, email := range []string{emailA, emailB, "nobody@proj-1.iam.gserviceaccount.com"} {
		_, err = x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodB), Want: exchange.KindAccessToken, Role: email})
		if xe := xerr(t, err); xe.Kind != exchange.Denied || xe.Code != "PERMISSION_DENIED" {
			t.Errorf("pod-b as %s: %v, want Denied PERMISSION_DENIED", email, err)
		}
	}
	// Granting and revoking take effect at once.
	w.s.Allow(emailB, subjectB)
	if _, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodB), Want: exchange.KindIDToken, Role: emailB, Audience: "x"}); err != nil {
		t.Errorf("after Allow: %v", err)
	}
	w.s.Revoke(emailB, subjectB)
	if _, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodB), Want: exchange.KindIDToken, Role: emailB, Audience: "x"}); xerr(t, err).Kind != exchange.Denied {
		t.Errorf("after Revoke: %v, want Denied", err)
	}

	wantCounts := googlests.Counts{Token: 9, GenerateAccessToken: 4, GenerateIDToken: 3, Introspect: 2, Federated: 9, AccessTokens: 1, IDTokens: 2, Denied: 4}
	if got := w.s.Counts(); got != wantCounts {
		t.Errorf("Counts\n got %+v\nwant %+v", got, wantCounts)
	}
	if got := w.s.PodCalls(string(w.PodA.UID)); got != 3 {
		t.Errorf("PodCalls(pod-a) = %d, want 3", got)
	}
	assertNoSecretsLogged(t, w)
}

func sameIssued(got, want googlests.Issued) bool {
	got.IssuedAt, got.Expiration = time.Time{}, time.Time{}
	return got.Kind == want.Kind && got.Subject == want.Subject && got.Namespace == want.Namespace &&
		got.PodName == want.PodName && got.PodUID == want.PodUID && got.Email == want.Email &&
		strings.Join(got.Scopes, " ") == strings.Join(want.Scopes, " ") && got.Audience == want.Audience
}

func introspect(t *testing.T, s *googlests.Server, token string) map[string]any {
	t.Helper()
	resp, err := http.PostForm(s.URL()+"/v1/introspect", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// forge signs pod A's claims, changed by mutate, with the API server's
// own key (peertest.Forge).
func forge(t *testing.T, w *world, mutate func(m map[string]any)) exchange.Secret {
	t.Helper()
	return peertest.Forge(t, w.CP, w.podToken(w.PodA), mutate)
}

var sign = peertest.Sign

func TestRejectedSubjectTokens(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	x := w.exchanger(nil)
	other := peertest.NewKey(t)
	// A forgery that differs from a real token only in its signature.
	forged := func() exchange.Secret { return peertest.Resigned(t, other, w.podToken(w.PodA)) }
	unbound := w.Unbound("app-a", gcp.TokenAudience(w.s.Provider()))
	https := w.Token(w.PodA, "https:"+gcp.TokenAudience(w.s.Provider()))
	if _, err := x.Exchange(ctx, exchange.Request{Token: https, Want: exchange.KindAccessToken}); err != nil {
		t.Errorf("the https: form of the audience: %v", err)
	}

	for _, tc := range []struct {
		name  string
		token exchange.Secret
	}{
		{"another audience", w.Token(w.PodA, "sts.amazonaws.com")},
		{"the API server's audience", w.Token(w.PodA, w.CP.Issuer)},
		{"another provider's audience", w.Token(w.PodA, "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/other/providers/other")},
		{"not bound to a pod", unbound},
		{"signed by another key", forged()},
		{"unknown key id", sign(t, other, "not-a-kid", map[string]any{"iss": w.CP.Issuer})},
		{"another issuer", forge(t, w, func(m map[string]any) { m["iss"] = "https://evil.example" })},
		{"expired", forge(t, w, func(m map[string]any) { m["exp"] = time.Now().Add(-time.Second).Unix() })},
		{"not yet valid", forge(t, w, func(m map[string]any) { m["nbf"] = time.Now().Add(time.Hour).Unix() })},
		{"no exp", forge(t, w, func(m map[string]any) { delete(m, "exp") })},
		{"no sub", forge(t, w, func(m map[string]any) { delete(m, "sub") })},
		{"pod UID of another pod", forge(t, w, func(m map[string]any) {
			m["kubernetes.io"].(map[string]any)["pod"].(map[string]any)["uid"] = string(w.PodB.UID)
		})},
		{"not a JWT", "not-a-jwt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := x.Exchange(ctx, exchange.Request{Token: tc.token, Want: exchange.KindAccessToken})
			if xe := xerr(t, err); xe.Kind != exchange.InvalidToken || xe.Code != "invalid_grant" {
				t.Errorf("error %v, want InvalidToken invalid_grant", err)
			}
		})
	}

	w.RunStaleTokens(t, w.podToken, func(tok exchange.Secret) error {
		_, err := x.Exchange(ctx, exchange.Request{Token: tok, Want: exchange.KindAccessToken})
		return err
	}, func(t *testing.T, err error) {
		if xe := xerr(t, err); xe.Kind != exchange.InvalidToken || !strings.Contains(err.Error(), "expired") {
			t.Errorf("error %v, want InvalidToken for expiry", err)
		}
	})
	t.Run("exchanger configured for another provider", func(t *testing.T) {
		y := w.exchanger(func(c *gcp.Config) {
			c.Provider = "projects/1/locations/global/workloadIdentityPools/other/providers/other"
		})
		_, err := y.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodA), Want: exchange.KindAccessToken})
		if xe := xerr(t, err); xe.Kind != exchange.InvalidRequest || xe.Code != "invalid_target" {
			t.Errorf("error %v, want InvalidRequest invalid_target", err)
		}
	})
	if got := w.s.Counts(); got.Federated != 1 || got.InvalidToken != 16 {
		t.Errorf("Counts = %+v, want 1 federated (the https: audience), 16 invalid", got)
	}
	assertNoSecretsLogged(t, w)
}

// post sends a raw request to the peer and returns the status and the
// decoded error's status name or OAuth code.
func post(t *testing.T, s *googlests.Server, path, bearer, contentType, body string) (int, string, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.URL()+path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	code := ""
	switch e := m["error"].(type) {
	case string:
		code = e
	case map[string]any:
		code, _ = e["status"].(string)
		if d, ok := e["details"].([]any); ok && len(d) > 0 {
			code += "/" + d[0].(map[string]any)["reason"].(string)
		}
	}
	return resp.StatusCode, code, m
}

func TestRequestChecks(t *testing.T) {
	w := setup(t)
	s := w.s
	form := func(mod func(url.Values)) string {
		v := url.Values{
			"audience":             {googlests.Audience(s.Provider())},
			"grant_type":           {"urn:ietf:params:oauth:grant-type:token-exchange"},
			"requested_token_type": {"urn:ietf:params:oauth:token-type:access_token"},
			"subject_token_type":   {"urn:ietf:params:oauth:token-type:jwt"},
			"subject_token":        {w.podToken(w.PodA).Reveal()},
			"scope":                {googlests.CloudPlatformScope},
		}
		mod(v)
		return v.Encode()
	}
	const formType = "application/x-www-form-urlencoded"
	sts := func(mod func(url.Values)) (int, string, map[string]any) {
		return post(t, s, "/v1/token", "", formType, form(mod))
	}
	for _, tc := range []struct {
		name   string
		mod    func(url.Values)
		status int
		code   string
	}{
		{"grant type", func(v url.Values) { v.Set("grant_type", "client_credentials") }, 400, "unsupported_grant_type"},
		{"requested token type", func(v url.Values) { v.Set("requested_token_type", "urn:ietf:params:oauth:token-type:id_token") }, 400, "invalid_request"},
		{"subject token type", func(v url.Values) { v.Set("subject_token_type", "urn:ietf:params:aws:token-type:aws4_request") }, 400, "invalid_request"},
		{"audience", func(v url.Values) {
			v.Set("audience", "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/x-pool/providers/x-prov")
		}, 400, "invalid_target"},
		{"no subject token", func(v url.Values) { v.Del("subject_token") }, 400, "invalid_request"},
		{"no scope", func(v url.Values) { v.Del("scope") }, 400, "invalid_scope"},
	} {
		t.Run("sts "+tc.name, func(t *testing.T) {
			if status, code, _ := sts(tc.mod); status != tc.status || code != tc.code {
				t.Errorf("%d %s, want %d %s", status, code, tc.status, tc.code)
			}
		})
	}

	status, _, ok := sts(func(url.Values) {})
	if status != 200 || ok["token_type"] != "Bearer" || ok["issued_token_type"] != "urn:ietf:params:oauth:token-type:access_token" || ok["expires_in"] != float64(3600) {
		t.Fatalf("token exchange: %d %v", status, ok)
	}
	fed := ok["access_token"].(string)
	_, _, narrow := sts(func(v url.Values) { v.Set("scope", scopeGCS) })
	narrowFed := narrow["access_token"].(string)

	const jsonType = "application/json"
	gat := "/v1/projects/-/serviceAccounts/" + emailA + ":generateAccessToken"
	git := "/v1/projects/-/serviceAccounts/" + emailA + ":generateIdToken"
	status, _, okAT := post(t, s, gat, fed, jsonType, `{"scope":["`+scopeGCS+`"],"lifetime":"1800s"}`)
	if status != 200 {
		t.Fatalf("generateAccessToken: %d %v", status, okAT)
	}
	exp, err := time.Parse(time.RFC3339, okAT["expireTime"].(string))
	if err != nil {
		t.Fatal(err)
	}
	near(t, "1800s token", exp, 30*time.Minute)
	// Even with cloud-platform, an impersonated token may not impersonate.
	_, _, okCP := post(t, s, gat, fed, jsonType, `{"scope":["`+googlests.CloudPlatformScope+`"]}`)
	impersonated := okCP["accessToken"].(string)

	for _, tc := range []struct {
		name, path, bearer, body string
		status                   int
		code                     string
	}{
		{"no Authorization", gat, "", `{"scope":["x"]}`, 401, "UNAUTHENTICATED/ACCESS_TOKEN_TYPE_UNSUPPORTED"},
		{"unknown bearer", gat, "ya29.made-up", `{"scope":["x"]}`, 401, "UNAUTHENTICATED/ACCESS_TOKEN_TYPE_UNSUPPORTED"},
		{"subject token as bearer", gat, w.podToken(w.PodA).Reveal(), `{"scope":["x"]}`, 401, "UNAUTHENTICATED/ACCESS_TOKEN_TYPE_UNSUPPORTED"},
		{"federated token without cloud-platform", gat, narrowFed, `{"scope":["x"]}`, 403, "PERMISSION_DENIED/ACCESS_TOKEN_SCOPE_INSUFFICIENT"},
		{"impersonated token as bearer", gat, impersonated, `{"scope":["x"]}`, 403, "PERMISSION_DENIED/IAM_PERMISSION_DENIED"},
		{"lifetime over the maximum", gat, fed, `{"scope":["x"],"lifetime":"3601s"}`, 400, "INVALID_ARGUMENT"},
		{"lifetime not a duration", gat, fed, `{"scope":["x"],"lifetime":"1h"}`, 400, "INVALID_ARGUMENT"},
		{"no scope", gat, fed, `{"lifetime":"60s"}`, 400, "INVALID_ARGUMENT"},
		{"bad JSON", gat, fed, `{`, 400, "INVALID_ARGUMENT"},
		{"malformed email", "/v1/projects/-/serviceAccounts/not an email:generateAccessToken", fed, `{"scope":["x"]}`, 400, "INVALID_ARGUMENT"},
		{"a project instead of -", "/v1/projects/p/serviceAccounts/" + emailA + ":generateAccessToken", fed, `{"scope":["x"]}`, 400, "INVALID_ARGUMENT"},
		{"id token without audience", git, fed, `{"includeEmail":true}`, 400, "INVALID_ARGUMENT"},
	} {
		t.Run("iam "+tc.name, func(t *testing.T) {
			if status, code, _ := post(t, s, tc.path, tc.bearer, jsonType, tc.body); status != tc.status || code != tc.code {
				t.Errorf("%d %s, want %d %s", status, code, tc.status, tc.code)
			}
		})
	}
	t.Run("iam expired federated token", func(t *testing.T) {
		w.Offset.Store(int64(time.Hour + time.Second))
		defer w.Offset.Store(0)
		if status, code, _ := post(t, s, gat, fed, jsonType, `{"scope":["x"]}`); status != 401 || code != "UNAUTHENTICATED/ACCESS_TOKEN_TYPE_UNSUPPORTED" {
			t.Errorf("%d %s, want 401 UNAUTHENTICATED", status, code)
		}
		if ir := introspect(t, s, fed); ir["active"] != false {
			t.Errorf("introspect(expired) = %v", ir)
		}
	})
	t.Run("SetLifetime", func(t *testing.T) {
		s.SetLifetime(90 * time.Second)
		defer s.SetLifetime(0)
		_, _, m := sts(func(url.Values) {})
		if m["expires_in"] != float64(90) {
			t.Errorf("expires_in %v, want 90", m["expires_in"])
		}
	})
	t.Run("id token without email", func(t *testing.T) {
		status, _, m := post(t, s, git, fed, jsonType, `{"audience":"aud-1"}`)
		if status != 200 {
			t.Fatalf("%d %v", status, m)
		}
		p, err := jwt.ParseSigned(m["token"].(string), []jose.SignatureAlgorithm{jose.RS256})
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := p.Claims(s.IDTokenKey(), &c); err != nil {
			t.Fatal(err)
		}
		if _, has := c["email"]; has || c["aud"] != "aud-1" {
			t.Errorf("claims %v: want aud-1 and no email without includeEmail", c)
		}
	})
	t.Run("JWKS of identity tokens", func(t *testing.T) {
		resp, err := http.Get(s.URL() + "/oauth2/v3/certs")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var set jose.JSONWebKeySet
		if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) != 1 {
			t.Fatalf("JWKS: %v, %d keys", err, len(set.Keys))
		}
		pub, ok := set.Keys[0].Key.(*rsa.PublicKey)
		if !ok || !pub.Equal(s.IDTokenKey()) {
			t.Errorf("JWKS key %T is not IDTokenKey", set.Keys[0].Key)
		}
	})
	assertNoSecretsLogged(t, w)
}

func TestFaults(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	x := w.exchanger(nil)
	access := func(role string) error {
		_, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodA), Want: exchange.KindAccessToken, Role: role})
		return err
	}
	for _, tc := range []struct {
		status int
		kind   exchange.ErrorKind
		code   string
	}{
		{503, exchange.Transient, "UNAVAILABLE"},
		{500, exchange.Transient, "INTERNAL"},
		{429, exchange.Throttled, "RESOURCE_EXHAUSTED"},
		{403, exchange.Denied, "PERMISSION_DENIED"},
	} {
		for _, ep := range []googlests.Endpoint{googlests.EndpointToken, googlests.EndpointGenerateAccessToken} {
			t.Run(string(ep)+" "+tc.code, func(t *testing.T) {
				if err := w.s.SetFault(googlests.Fault{Status: tc.status, Endpoints: []googlests.Endpoint{ep}}); err != nil {
					t.Fatal(err)
				}
				defer w.s.SetFault(googlests.Fault{})
				err := access(emailA)
				if xe := xerr(t, err); xe.Kind != tc.kind || xe.Code != tc.code || !strings.Contains(err.Error(), string(ep)[:5]) {
					t.Errorf("error %v, want %v %s from %s", err, tc.kind, tc.code, ep)
				}
			})
		}
	}
	c := w.s.Counts()
	if c.Faulted != 8 || c.Token != 8 || c.GenerateAccessToken != 4 || c.Federated != 4 || c.AccessTokens != 0 {
		t.Errorf("after status faults, Counts = %+v", c)
	}

	peertest.RunTransportFaults(t, peertest.TransportFaults{
		Set: func(f peertest.TransportFault) error {
			gf := googlests.Fault{Latency: f.Latency, Refuse: f.Refuse, Reset: f.Reset}
			// The slow answer that arrives and the reset are
			// generateAccessToken's; the client timeout meets every call.
			if f.Reset || f.Latency > 0 && f.Latency < time.Minute {
				gf.Endpoints = []googlests.Endpoint{googlests.EndpointGenerateAccessToken}
			}
			return w.s.SetFault(gf)
		},
		Call:    func() error { return access(emailA) },
		Refused: func() error { return access("") },
		Timeout: func() error {
			y := w.exchanger(func(c *gcp.Config) { c.HTTPClient = &http.Client{Timeout: 200 * time.Millisecond} })
			_, err := y.Exchange(ctx, exchange.Request{Token: w.podToken(w.PodA), Want: exchange.KindAccessToken})
			return err
		},
	})
	assertNoSecretsLogged(t, w)
}

func TestHarnessStartGoogleSTS(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	ctx := context.Background()
	if _, err := cp.CreateServiceAccount(ctx, ns, "app-a", ""); err != nil {
		t.Fatal(err)
	}
	s, err := cp.StartGoogleSTS(ctx, harness.GoogleSTSConfig{Addr: "127.0.0.1:0", Impersonation: map[string][]string{emailA: {subjectA}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	w := &world{World: &peertest.World{T: t, CP: cp}, s: s}
	pod := w.CreatePod("pod-a", "app-a")
	x := w.exchanger(nil)
	c, err := x.Exchange(ctx, exchange.Request{Token: w.podToken(pod), Want: exchange.KindAccessToken, Role: emailA})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(c.AccessToken.Reveal()); got.PodUID != string(pod.UID) || got.Email != emailA {
		t.Errorf("Lookup = %+v", got)
	}
	tok := w.podToken(pod)
	if err := cp.DeletePod(ctx, ns, pod.Name); err != nil {
		t.Fatal(err)
	}
	_, err = x.Exchange(ctx, exchange.Request{Token: tok, Want: exchange.KindAccessToken})
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
// token exchange is a retryable 503, not a verdict on the token.
func TestIssuerUnreachable(t *testing.T) {
	s, err := googlests.New(googlests.Config{Issuer: "http://127.0.0.1:1", HTTPClient: &http.Client{Timeout: 2 * time.Second}})
	s = peertest.Started(t, s, err)
	key := peertest.NewKey(t)
	tok := sign(t, key, "k1", map[string]any{"iss": "http://127.0.0.1:1", "sub": subjectA, "aud": googlests.Audience(s.Provider()), "exp": time.Now().Add(time.Hour).Unix()})
	x, err := gcp.New(gcp.Config{Provider: s.Provider(), STSEndpoint: s.URL(), IAMCredentialsEndpoint: s.URL()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = x.Exchange(context.Background(), exchange.Request{Token: tok, Want: exchange.KindAccessToken})
	if xe := xerr(t, err); xe.Kind != exchange.Transient || xe.Code != "temporarily_unavailable" || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("error %v, want Transient temporarily_unavailable (503)", err)
	}
	if c := s.Counts(); c.Token != 1 || c.InvalidToken != 0 || c.Federated != 0 {
		t.Errorf("Counts = %+v", c)
	}
}
