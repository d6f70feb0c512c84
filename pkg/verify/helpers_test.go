package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	clocktesting "k8s.io/utils/clock/testing"
)

// t0 is the fake clock's start; tokens are minted around it.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

const (
	testAudience = "orders.shop.svc"
	testSubject  = "system:serviceaccount:shop:frontend"
)

var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaKey2  *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
)

// testKeys generates the keys once per test binary (RSA generation is slow
// under -race).
func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

// issuer is an https OIDC issuer on httptest: discovery and a JWKS, whose
// fetches it counts.
type issuer struct {
	srv         *httptest.Server
	jwksFetches atomic.Int64
	discFetches atomic.Int64

	mu       sync.Mutex
	keys     []jose.JSONWebKey
	docIss   string // issuer named in the discovery document; default URL
	failJWKS bool
}

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	testKeys(t)
	is := &issuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.discFetches.Add(1)
		is.mu.Lock()
		iss := is.docIss
		is.mu.Unlock()
		if iss == "" {
			iss = is.srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss,
			"jwks_uri":                              is.srv.URL + "/openid/v1/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "HS256", "none"},
		})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		is.jwksFetches.Add(1)
		is.mu.Lock()
		defer is.mu.Unlock()
		if is.failJWKS {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: is.keys})
	})
	is.srv = httptest.NewTLSServer(mux)
	t.Cleanup(is.srv.Close)
	is.setKeys(
		jose.JSONWebKey{Key: rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		jose.JSONWebKey{Key: ecKey.Public(), KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
	)
	return is
}

func (is *issuer) setKeys(keys ...jose.JSONWebKey) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = keys
}

func (is *issuer) setFail(fail bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.failJWKS = fail
}

// config is a valid Config for this issuer, on a fake clock at t0.
func (is *issuer) config(clk *clocktesting.FakePassiveClock) Config {
	return Config{
		Issuer:     is.srv.URL,
		HTTPClient: is.srv.Client(),
		Audiences:  []string{testAudience},
		Subjects:   []string{"system:serviceaccount:shop:frontend", "system:serviceaccount:batch-*:*"},
		Clock:      clk,
	}
}

// setup returns an issuer, a fake clock at t0 and a verifier of the
// issuer's config as mutate (nil: none) changed it.
func setup(t testing.TB, mutate func(*Config)) (*issuer, *clocktesting.FakePassiveClock, *Verifier) {
	t.Helper()
	is := newIssuer(t)
	clk := clocktesting.NewFakePassiveClock(t0)
	cfg := is.config(clk)
	if mutate != nil {
		mutate(&cfg)
	}
	return is, clk, newVerifier(t, cfg)
}

// rs256 and es256 mint a token with goodClaims, signed by the issuer's
// RSA or EC key under key ID kid.
func (is *issuer) rs256(t testing.TB, kid string) string {
	return mint(t, rsaKey, jose.RS256, kid, goodClaims(is.srv.URL))
}

func (is *issuer) es256(t testing.TB, kid string) string {
	return mint(t, ecKey, jose.ES256, kid, goodClaims(is.srv.URL))
}

// wantFetches fails the test, with format naming the count, unless the
// issuer served its key set want times.
func (is *issuer) wantFetches(t testing.TB, want int64, format string) {
	t.Helper()
	if n := is.jwksFetches.Load(); n != want {
		t.Fatalf(format, n)
	}
}

func newVerifier(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return v
}

// tokenClaims are what mint signs; the zero value of a field leaves it out.
type tokenClaims struct {
	jwt.Claims
	K8s *k8sClaims `json:"kubernetes.io,omitempty"`
}

// goodClaims are a pod-bound ServiceAccount token's claims, as the API
// server writes them, for issuer iss.
func goodClaims(iss string) tokenClaims {
	return tokenClaims{
		Claims: jwt.Claims{
			Issuer:    iss,
			Subject:   testSubject,
			Audience:  jwt.Audience{testAudience},
			Expiry:    jwt.NewNumericDate(t0.Add(time.Hour)),
			NotBefore: jwt.NewNumericDate(t0),
			IssuedAt:  jwt.NewNumericDate(t0),
			ID:        "jti-1",
		},
		K8s: &k8sClaims{
			Namespace:      "shop",
			ServiceAccount: &objRef{Name: "frontend", UID: "sa-uid"},
			Pod:            &objRef{Name: "frontend-7d9", UID: "pod-uid"},
			Node:           &objRef{Name: "node-1", UID: "node-uid"},
		},
	}
}

// mint signs c with key under alg and kid.
func mint(t testing.TB, key crypto.Signer, alg jose.SignatureAlgorithm, kid string, c tokenClaims) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	tok, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		t.Fatalf("signing: %v", err)
	}
	return tok
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// certPEM is the PEM of an httptest TLS server's certificate (its own CA).
func certPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}
