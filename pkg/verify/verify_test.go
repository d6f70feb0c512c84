package verify

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// rawToken builds a compact JWS by hand from a header and claims, with the
// signature sign computes over "header.payload" (nil: empty signature).
func rawToken(t *testing.T, hdr map[string]any, c tokenClaims, sign func(input []byte) []byte) string {
	t.Helper()
	h, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(input))
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func hs256(secret []byte) func([]byte) []byte {
	return func(in []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write(in)
		return m.Sum(nil)
	}
}

// checkNoToken fails if err's text contains the token or one of its parts.
func checkNoToken(t *testing.T, err error, token string) {
	t.Helper()
	msg := err.Error()
	if token != "" && strings.Contains(msg, token) {
		t.Fatalf("error text contains the token: %s", msg)
	}
	for i, part := range strings.Split(token, ".") {
		if len(part) >= 16 && strings.Contains(msg, part) {
			t.Fatalf("error text contains part %d of the token: %s", i, msg)
		}
	}
}

func TestVerifyAccepts(t *testing.T) {
	is, _, v := setup(t, nil)
	ctx := context.Background()

	for _, tc := range []struct {
		name  string
		token string
	}{
		{"RS256", is.rs256(t, "rsa-1")},
		{"ES256", is.es256(t, "ec-1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(ctx, tc.token)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := Identity{
				Subject: testSubject, Namespace: "shop", ServiceAccount: "frontend", ServiceAccountUID: "sa-uid",
				PodName: "frontend-7d9", PodUID: "pod-uid", NodeName: "node-1", NodeUID: "node-uid",
				Issuer: is.srv.URL, Audiences: []string{testAudience}, ID: "jti-1",
				IssuedAt: t0, Expiry: t0.Add(time.Hour),
			}
			if id.Subject != want.Subject || id.Namespace != want.Namespace || id.ServiceAccount != want.ServiceAccount ||
				id.ServiceAccountUID != want.ServiceAccountUID || id.PodName != want.PodName || id.PodUID != want.PodUID ||
				id.NodeName != want.NodeName || id.NodeUID != want.NodeUID || id.Issuer != want.Issuer ||
				len(id.Audiences) != 1 || id.Audiences[0] != testAudience || id.ID != want.ID ||
				!id.IssuedAt.Equal(want.IssuedAt) || !id.Expiry.Equal(want.Expiry) || id.Reviewed {
				t.Fatalf("identity = %+v, want %+v", *id, want)
			}
		})
	}
	// A glob pattern, a token that is not pod-bound, a list audience of
	// which one is accepted.
	c := goodClaims(is.srv.URL)
	c.Subject = "system:serviceaccount:batch-nightly:runner"
	c.K8s = &k8sClaims{Namespace: "batch-nightly", ServiceAccount: &objRef{Name: "runner", UID: "u"}}
	c.Audience = jwt.Audience{"someone-else", testAudience}
	id, err := v.Verify(ctx, mint(t, rsaKey, jose.RS256, "rsa-1", c))
	if err != nil {
		t.Fatalf("glob subject: %v", err)
	}
	if id.PodName != "" || id.NodeName != "" || id.Namespace != "batch-nightly" {
		t.Fatalf("identity = %+v", *id)
	}
	is.wantFetches(t, 1, "JWKS fetched %d times, want 1 (cached)")
}

// TestVerifyRefusals: each refusal has its reason, and no error text
// carries the token.
func TestVerifyRefusals(t *testing.T) {
	is, _, v := setup(t, func(cfg *Config) {
		cfg.Leeway = 30 * time.Second
	})
	iss := is.srv.URL

	with := func(f func(*tokenClaims)) tokenClaims {
		c := goodClaims(iss)
		f(&c)
		return c
	}
	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	pubJWK, err := json.Marshal(jose.JSONWebKey{Key: rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"})
	if err != nil {
		t.Fatal(err)
	}
	good := goodClaims(iss)
	rs := func(c tokenClaims) string { return mint(t, rsaKey, jose.RS256, "rsa-1", c) }

	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"wrong audience", rs(with(func(c *tokenClaims) { c.Audience = jwt.Audience{"billing.shop.svc"} })), ErrAudience},
		{"agent exchange audience", rs(with(func(c *tokenClaims) { c.Audience = jwt.Audience{"sts.amazonaws.com"} })), ErrAudience},
		{"API server audience", rs(with(func(c *tokenClaims) { c.Audience = jwt.Audience{"https://kubernetes.default.svc"} })), ErrAudience},
		{"no audience", rs(with(func(c *tokenClaims) { c.Audience = nil })), ErrAudience},
		{"expired", rs(with(func(c *tokenClaims) { c.Expiry = jwt.NewNumericDate(t0.Add(-31 * time.Second)) })), ErrExpired},
		{"no exp", rs(with(func(c *tokenClaims) { c.Expiry = nil })), ErrClaims},
		{"not yet valid", rs(with(func(c *tokenClaims) { c.NotBefore = jwt.NewNumericDate(t0.Add(31 * time.Second)) })), ErrNotYetValid},
		{"issued in the future", rs(with(func(c *tokenClaims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(time.Minute)) })), ErrNotYetValid},
		{"another issuer", rs(with(func(c *tokenClaims) { c.Issuer = "https://other.example" })), ErrIssuer},
		{"issuer with a trailing slash", rs(with(func(c *tokenClaims) { c.Issuer = iss + "/" })), ErrIssuer},
		{"another issuer's key", mint(t, rsaKey2, jose.RS256, "other-cluster", good), ErrUnknownKey},
		{"subject not allowed", rs(with(func(c *tokenClaims) {
			c.Subject = "system:serviceaccount:shop:backend"
			c.K8s.ServiceAccount.Name = "backend"
		})), ErrSubject},
		{"subject glob does not cross the colon", rs(with(func(c *tokenClaims) {
			c.Subject = "system:serviceaccount:batch-x:y:z"
		})), ErrSubject},
		{"subject not a ServiceAccount", rs(with(func(c *tokenClaims) { c.Subject = "admin" })), ErrSubject},
		{"sub disagrees with kubernetes.io", rs(with(func(c *tokenClaims) { c.K8s.Namespace = "other" })), ErrClaims},
		{"no kubernetes.io claim", rs(with(func(c *tokenClaims) { c.K8s = nil })), ErrClaims},
		{"alg none, no signature", rawToken(t, map[string]any{"alg": "none", "kid": "rsa-1"}, good, nil), ErrAlgorithm},
		{"alg none, RS256 signature copied", func() string {
			parts := strings.Split(rs(good), ".")
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"rsa-1"}`))
			return h + "." + parts[1] + "." + parts[2]
		}(), ErrAlgorithm},
		{"alg none, no key ID", rawToken(t, map[string]any{"alg": "none"}, good, nil), ErrAlgorithm},
		{"HS256 under an unknown key ID", rawToken(t, map[string]any{"alg": "HS256", "kid": "nope"}, good, hs256(pubPEM)), ErrAlgorithm},
		{"alg NONE", rawToken(t, map[string]any{"alg": "NONE", "kid": "rsa-1"}, good, nil), ErrAlgorithm},
		{"HS256 with the public key PEM", rawToken(t, map[string]any{"alg": "HS256", "kid": "rsa-1"}, good, hs256(pubPEM)), ErrAlgorithm},
		{"HS256 with the public key DER", rawToken(t, map[string]any{"alg": "HS256", "kid": "rsa-1"}, good, hs256(pubDER)), ErrAlgorithm},
		{"HS256 with the public JWK", rawToken(t, map[string]any{"alg": "HS256", "kid": "rsa-1"}, good, hs256(pubJWK)), ErrAlgorithm},
		{"HS512", rawToken(t, map[string]any{"alg": "HS512", "kid": "rsa-1"}, good, hs256(pubPEM)), ErrAlgorithm},
		{"PS256 (RSA-PSS, not pinned)", mint(t, rsaKey, jose.PS256, "rsa-1", good), ErrAlgorithm},
		{"RS256 header on the EC key", rawToken(t, map[string]any{"alg": "RS256", "kid": "ec-1"}, good, func(in []byte) []byte { return []byte("x") }), ErrAlgorithm},
		{"ES256 token naming the RSA key", mint(t, ecKey, jose.ES256, "rsa-1", good), ErrAlgorithm},
		{"unknown key ID", mint(t, rsaKey, jose.RS256, "rotated-away", good), ErrUnknownKey},
		{"no key ID", mint(t, rsaKey, jose.RS256, "", good), ErrUnknownKey},
		{"bad signature", func() string {
			tok := rs(good)
			other := rs(with(func(c *tokenClaims) { c.ID = "jti-2" }))
			return tok[:strings.LastIndex(tok, ".")] + other[strings.LastIndex(other, "."):]
		}(), ErrSignature},
		{"signed by another key under a known key ID", mint(t, rsaKey2, jose.RS256, "rsa-1", good), ErrSignature},
		{"two parts", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0", ErrMalformed},
		{"garbage", "not a token at all, just words", ErrMalformed},
		{"empty", "", ErrMalformed},
		{"oversized", strings.Repeat("a", maxTokenSize+1), ErrMalformed},
		{"claims not JSON", func() string {
			tok := rs(good)
			parts := strings.Split(tok, ".")
			parts[1] = base64.RawURLEncoding.EncodeToString([]byte("not json"))
			return strings.Join(parts, ".")
		}(), ErrSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(context.Background(), tc.token)
			if err == nil {
				t.Fatalf("Verify accepted it: %+v", id)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
			var ve *Error
			if !errors.As(err, &ve) || ve.Kind != tc.want || ve.Retryable() {
				t.Fatalf("Verify: %#v, want an *Error of kind %v, not retryable", err, tc.want)
			}
			checkNoToken(t, err, tc.token)
		})
	}
	// Only the two unknown key IDs (and the first load) fetched the key
	// set; algorithm refusals come before any key lookup. The fake clock
	// never moves, so the rate limit allows one fetch in all.
	is.wantFetches(t, 1, "JWKS fetches = %d, want 1")
}

// TestLeeway: exp, nbf and iat are accepted within the leeway and refused
// just past it.
func TestLeeway(t *testing.T) {
	is, clk, v := setup(t, func(cfg *Config) {
		cfg.Leeway = 30 * time.Second
	})
	tok := is.rs256(t, "rsa-1") // nbf=iat=t0, exp=t0+1h
	for _, tc := range []struct {
		at   time.Time
		want error
	}{
		{t0.Add(-30 * time.Second), nil},
		{t0.Add(-31 * time.Second), ErrNotYetValid},
		{t0.Add(time.Hour + 30*time.Second), nil},
		{t0.Add(time.Hour + 31*time.Second), ErrExpired},
	} {
		clk.SetTime(tc.at)
		_, err := v.Verify(context.Background(), tok)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("at %v: Verify = %v, want %v", tc.at.Sub(t0), err, tc.want)
		}
	}
}

func TestConfigRefused(t *testing.T) {
	ok := Config{Issuer: "https://issuer.example", Audiences: []string{"a"}, Subjects: []string{"system:serviceaccount:ns:sa"}}
	if _, err := New(ok); err != nil {
		t.Fatalf("New(valid): %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"no issuer", func(c *Config) { c.Issuer = "" }},
		{"http issuer", func(c *Config) { c.Issuer = "http://issuer.example" }},
		{"no audience", func(c *Config) { c.Audiences = nil }},
		{"empty audience", func(c *Config) { c.Audiences = []string{""} }},
		{"no subjects", func(c *Config) { c.Subjects = nil }},
		{"subject not a ServiceAccount pattern", func(c *Config) { c.Subjects = []string{"system:node:*"} }},
		{"subject with too many parts", func(c *Config) { c.Subjects = []string{"system:serviceaccount:a:b:c"} }},
		{"bad glob", func(c *Config) { c.Subjects = []string{"system:serviceaccount:[:sa"} }},
		{"HS256", func(c *Config) { c.Algorithms = []string{"HS256"} }},
		{"none", func(c *Config) { c.Algorithms = []string{"none"} }},
		{"RS256 and HS256", func(c *Config) { c.Algorithms = []string{"RS256", "HS256"} }},
		{"leeway too large", func(c *Config) { c.Leeway = time.Hour }},
		{"TokenReview without Kubernetes", func(c *Config) { c.TokenReview = true }},
		{"realm with a quote", func(c *Config) { c.Realm = `a"b` }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			if _, err := New(c); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}

// TestSignedBadClaims: a correctly signed token whose claims do not decode
// (exp as a string, aud as a number) is malformed, and the error, which
// carries the JSON decoder's text, still does not carry the token.
func TestSignedBadClaims(t *testing.T) {
	is, _, v := setup(t, nil)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: rsaKey},
		(&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), "rsa-1"))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]map[string]any{
		"exp a string":       {"iss": is.srv.URL, "sub": testSubject, "aud": testAudience, "exp": "tomorrow-secret-marker"},
		"aud a number":       {"iss": is.srv.URL, "sub": testSubject, "aud": 42, "exp": t0.Add(time.Hour).Unix()},
		"kubernetes.io list": {"iss": is.srv.URL, "sub": testSubject, "aud": testAudience, "exp": t0.Add(time.Hour).Unix(), "kubernetes.io": []string{"x"}},
	} {
		t.Run(name, func(t *testing.T) {
			tok, err := jwt.Signed(s).Claims(c).Serialize()
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(context.Background(), tok)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Verify = %v, want ErrMalformed", err)
			}
			checkNoToken(t, err, tok)
			if strings.Contains(err.Error(), "secret-marker") {
				t.Fatalf("error text carries a claim's value: %v", err)
			}
		})
	}
}

// TestEmbeddedKeyIgnored: a token carrying its own key in the header (jwk)
// is checked against the issuer's key for its key ID, never the embedded one.
func TestEmbeddedKeyIgnored(t *testing.T) {
	is, _, v := setup(t, nil)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: rsaKey2},
		(&jose.SignerOptions{EmbedJWK: true}).WithHeader(jose.HeaderKey("kid"), "rsa-1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(goodClaims(is.srv.URL)).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := base64.RawURLEncoding.DecodeString(tok[:strings.Index(tok, ".")])
	if err != nil || !strings.Contains(string(hdr), `"jwk"`) {
		t.Fatalf("header %s carries no jwk (%v)", hdr, err)
	}
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, ErrSignature) {
		t.Fatalf("Verify(embedded jwk) = %v, want ErrSignature", err)
	}
}
