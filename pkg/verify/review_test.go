package verify

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
)

const (
	clusterIssuer = "https://kubernetes.default.svc.cluster.local"
	verifierToken = "verifier-credential"
)

// fakeAPIServer serves what the verifier asks of a kube-apiserver:
// discovery, the JWKS (both only with the verifier's bearer token) and
// TokenReview, whose answer review decides.
type fakeAPIServer struct {
	srv         *httptest.Server
	reviews     atomic.Int64
	jwksFetches atomic.Int64
	unauth      atomic.Int64

	mu     sync.Mutex
	review func(tr *authenticationv1.TokenReview) (int, authenticationv1.TokenReviewStatus)
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	t.Helper()
	testKeys(t)
	f := &fakeAPIServer{}
	f.review = func(tr *authenticationv1.TokenReview) (int, authenticationv1.TokenReviewStatus) {
		return http.StatusCreated, authenticationv1.TokenReviewStatus{
			Authenticated: true,
			Audiences:     tr.Spec.Audiences,
			User: authenticationv1.UserInfo{Username: testSubject, Extra: map[string]authenticationv1.ExtraValue{
				"authentication.kubernetes.io/pod-uid": {"pod-uid"},
			}},
		}
	}
	authed := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+verifierToken {
				f.unauth.Add(1)
				http.Error(w, "Unauthorized", http.StatusUnauthorized)
				return
			}
			h(w, r)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", authed(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": clusterIssuer,
			// Elsewhere: must never be contacted with the credentials.
			"jwks_uri": "https://public-bucket.example/openid/v1/jwks",
		})
	}))
	mux.HandleFunc("GET /openid/v1/jwks", authed(func(w http.ResponseWriter, r *http.Request) {
		f.jwksFetches.Add(1)
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		}})
	}))
	mux.HandleFunc("POST /apis/authentication.k8s.io/v1/tokenreviews", authed(func(w http.ResponseWriter, r *http.Request) {
		f.reviews.Add(1)
		var tr authenticationv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil || tr.Kind != "TokenReview" || tr.APIVersion != "authentication.k8s.io/v1" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		review := f.review
		f.mu.Unlock()
		code, st := review(&tr)
		tr.Status = st
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(&tr)
	}))
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPIServer) setReview(r func(tr *authenticationv1.TokenReview) (int, authenticationv1.TokenReviewStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.review = r
}

func (f *fakeAPIServer) restConfig() *rest.Config {
	return &rest.Config{
		Host:            f.srv.URL,
		BearerToken:     verifierToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: certPEM(f.srv)},
	}
}

// TestKubernetesDiscovery: in-cluster mode learns the issuer from the API
// server's discovery document, fetches the key set from the API server with
// the verifier's credentials, and never follows jwks_uri elsewhere.
func TestKubernetesDiscovery(t *testing.T) {
	f := newFakeAPIServer(t)
	clk := clocktesting.NewFakePassiveClock(t0)
	v := newVerifier(t, Config{
		Kubernetes: f.restConfig(), Audiences: []string{testAudience},
		Subjects: []string{testSubject}, Clock: clk,
	})
	id, err := v.Verify(context.Background(), mint(t, rsaKey, jose.RS256, "rsa-1", goodClaims(clusterIssuer)))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if id.Issuer != clusterIssuer || id.Reviewed {
		t.Fatalf("identity %+v", *id)
	}
	if _, err := v.Verify(context.Background(), mint(t, rsaKey, jose.RS256, "rsa-1", goodClaims(f.srv.URL))); !errors.Is(err, ErrIssuer) {
		t.Fatalf("Verify(iss = API server URL) = %v, want ErrIssuer", err)
	}
	if f.unauth.Load() != 0 || f.jwksFetches.Load() != 1 || f.reviews.Load() != 0 {
		t.Fatalf("unauthenticated %d, JWKS fetches %d, reviews %d; want 0, 1, 0", f.unauth.Load(), f.jwksFetches.Load(), f.reviews.Load())
	}

	// A configured issuer that the API server does not name: unavailable.
	v = newVerifier(t, Config{
		Kubernetes: f.restConfig(), Issuer: "https://other.example", Audiences: []string{testAudience},
		Subjects: []string{testSubject}, Clock: clk,
	})
	if err := v.Ready(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready with a mismatching issuer = %v, want ErrUnavailable", err)
	}
}

func TestTokenReview(t *testing.T) {
	f := newFakeAPIServer(t)
	clk := clocktesting.NewFakePassiveClock(t0)
	v := newVerifier(t, Config{
		Kubernetes: f.restConfig(), Audiences: []string{testAudience}, Subjects: []string{testSubject},
		TokenReview: true, ReviewCacheTTL: 10 * time.Second, Clock: clk,
	})
	ctx := context.Background()
	tok := mint(t, rsaKey, jose.RS256, "rsa-1", goodClaims(clusterIssuer))

	id, err := v.Verify(ctx, tok)
	if err != nil || !id.Reviewed {
		t.Fatalf("Verify = %+v, %v; want a reviewed identity", id, err)
	}
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if n := f.reviews.Load(); n != 1 {
		t.Fatalf("TokenReviews = %d, want 1 (cached)", n)
	}

	// The pod is deleted: the API server stops authenticating the token,
	// and its error text (echoing the token, as a careless server might)
	// does not reach the error.
	f.setReview(func(tr *authenticationv1.TokenReview) (int, authenticationv1.TokenReviewStatus) {
		return http.StatusCreated, authenticationv1.TokenReviewStatus{Error: `pod "frontend-7d9" not found; token ` + tr.Spec.Token}
	})
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("Verify within the cache TTL = %v, want the cached answer", err)
	}
	clk.SetTime(t0.Add(10 * time.Second))
	_, err = v.Verify(ctx, tok)
	if !errors.Is(err, ErrRevoked) {
		t.Fatalf("Verify after deletion = %v, want ErrRevoked", err)
	}
	checkNoToken(t, err, tok)

	// Another user or pod than the token says: refused.
	for name, st := range map[string]authenticationv1.TokenReviewStatus{
		"not authenticated, naming the user": {Authenticated: false, User: authenticationv1.UserInfo{Username: testSubject}},
		"other user":                         {Authenticated: true, User: authenticationv1.UserInfo{Username: "system:serviceaccount:shop:backend"}},
		"other pod": {Authenticated: true, User: authenticationv1.UserInfo{Username: testSubject, Extra: map[string]authenticationv1.ExtraValue{
			"authentication.kubernetes.io/pod-uid": {"another-pod"},
		}}},
	} {
		f.setReview(func(*authenticationv1.TokenReview) (int, authenticationv1.TokenReviewStatus) {
			return http.StatusCreated, st
		})
		clk.SetTime(clk.Now().Add(10 * time.Second))
		if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrRevoked) {
			t.Fatalf("%s: Verify = %v, want ErrRevoked", name, err)
		}
	}

	// TokenReview forbidden to the verifier: retryable, not cached.
	f.setReview(func(*authenticationv1.TokenReview) (int, authenticationv1.TokenReviewStatus) {
		return http.StatusForbidden, authenticationv1.TokenReviewStatus{}
	})
	clk.SetTime(clk.Now().Add(10 * time.Second))
	before := f.reviews.Load()
	for i := 0; i < 2; i++ {
		_, err = v.Verify(ctx, tok)
		var ve *Error
		if !errors.As(err, &ve) || ve.Kind != ErrUnavailable || !ve.Retryable() {
			t.Fatalf("Verify with TokenReview forbidden = %v, want retryable ErrUnavailable", err)
		}
	}
	if n := f.reviews.Load() - before; n != 2 {
		t.Fatalf("TokenReviews while forbidden = %d, want 2 (failures are not cached)", n)
	}

	// Tokens refused locally never reach TokenReview.
	before = f.reviews.Load()
	c := goodClaims(clusterIssuer)
	c.Audience = []string{"sts.amazonaws.com"}
	for _, bad := range []string{
		mint(t, rsaKey, jose.RS256, "rsa-1", c),
		mint(t, rsaKey, jose.RS256, "random", goodClaims(clusterIssuer)),
		"garbage",
	} {
		if _, err := v.Verify(ctx, bad); err == nil {
			t.Fatal("accepted")
		}
	}
	if n := f.reviews.Load() - before; n != 0 {
		t.Fatalf("%d TokenReviews for tokens refused locally", n)
	}
}
