package verify

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	clocktesting "k8s.io/utils/clock/testing"
)

func randomKID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestUnknownKeyFloodRateLimited: a flood of tokens with random key IDs,
// sequential and concurrent, costs the issuer one JWKS fetch per
// RefreshInterval, and each is refused as an unknown key.
func TestUnknownKeyFloodRateLimited(t *testing.T) {
	is, clk, v := setup(t, func(cfg *Config) {
		cfg.RefreshInterval = 10 * time.Second
	})
	ctx := context.Background()
	good := is.rs256(t, "rsa-1")
	if _, err := v.Verify(ctx, good); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	is.wantFetches(t, 1, "JWKS fetches after warm-up = %d, want 1")
	// Mint the flood once: signing is not what is measured.
	flood := make([]string, 500)
	for i := range flood {
		flood[i] = mint(t, rsaKey, jose.RS256, randomKID(), goodClaims(is.srv.URL))
	}
	refuseAll := func(t *testing.T) {
		t.Helper()
		for _, tok := range flood {
			if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("Verify(random kid) = %v, want ErrUnknownKey", err)
			}
		}
	}

	// Within the interval of the warm-up fetch: no fetch at all.
	refuseAll(t)
	if n := is.jwksFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetches after %d random key IDs within the interval = %d, want 1", len(flood), n)
	}
	// One interval later: one fetch for the whole flood.
	clk.SetTime(t0.Add(10 * time.Second))
	refuseAll(t)
	is.wantFetches(t, 2, "JWKS fetches after the next interval = %d, want 2")
	// Concurrently, another interval later: still one fetch.
	clk.SetTime(t0.Add(20 * time.Second))
	var wg sync.WaitGroup
	errs := make(chan error, len(flood))
	for _, tok := range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrUnknownKey) {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Verify(random kid) = %v, want ErrUnknownKey", err)
	}
	is.wantFetches(t, 3, "JWKS fetches after a concurrent flood = %d, want 3")
	// The good token kept verifying from the cache throughout.
	if _, err := v.Verify(ctx, good); err != nil {
		t.Fatalf("Verify(good) after the flood: %v", err)
	}
	if n := is.discFetches.Load(); n != 1 {
		t.Fatalf("discovery fetches = %d, want 1", n)
	}
}

// TestUnknownKeyFloodRealClock measures the same on the real clock, for the
// record: fetches stay at one per interval however fast tokens arrive.
func TestUnknownKeyFloodRealClock(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	is := newIssuer(t)
	cfg := is.config(nil)
	cfg.Clock = nil
	cfg.RefreshInterval = 250 * time.Millisecond
	v := newVerifier(t, cfg)
	ctx := context.Background()
	c := goodClaims(is.srv.URL)
	c.Expiry = nil // irrelevant: refused before the claims
	tokens := make([]string, 200)
	for i := range tokens {
		tokens[i] = mint(t, ecKey, jose.ES256, randomKID(), c)
	}
	start := time.Now()
	n := 0
	for time.Since(start) < time.Second {
		if _, err := v.Verify(ctx, tokens[n%len(tokens)]); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("Verify = %v", err)
		}
		n++
	}
	elapsed := time.Since(start)
	fetches := is.jwksFetches.Load()
	max := int64(elapsed/cfg.RefreshInterval) + 1
	t.Logf("%d tokens with random key IDs in %v: %d JWKS fetches (interval %v)", n, elapsed.Round(time.Millisecond), fetches, cfg.RefreshInterval)
	if fetches > max {
		t.Fatalf("%d JWKS fetches in %v, want at most %d", fetches, elapsed, max)
	}
}

// TestKeyRotation: a token signed with a key the issuer added later is
// accepted after one refresh, and a key the issuer removed stops being
// accepted once the set is older than MaxKeyAge.
func TestKeyRotation(t *testing.T) {
	is, clk, v := setup(t, func(cfg *Config) {
		cfg.RefreshInterval = 10 * time.Second
		cfg.MaxKeyAge = time.Minute
	})
	ctx := context.Background()
	old := is.rs256(t, "rsa-1")
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	is.setKeys(
		jose.JSONWebKey{Key: rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		jose.JSONWebKey{Key: rsaKey2.Public(), KeyID: "rsa-2", Algorithm: "RS256", Use: "sig"},
	)
	rotated := mint(t, rsaKey2, jose.RS256, "rsa-2", goodClaims(is.srv.URL))
	clk.SetTime(t0.Add(10 * time.Second))
	if _, err := v.Verify(ctx, rotated); err != nil {
		t.Fatalf("Verify(new key) = %v", err)
	}
	// The issuer drops rsa-1; within MaxKeyAge it is still known.
	is.setKeys(jose.JSONWebKey{Key: rsaKey2.Public(), KeyID: "rsa-2", Algorithm: "RS256", Use: "sig"})
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatalf("Verify(old key, set still fresh) = %v", err)
	}
	clk.SetTime(t0.Add(10*time.Second + time.Minute))
	if _, err := v.Verify(ctx, old); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Verify(removed key, set aged) = %v, want ErrUnknownKey", err)
	}
	if _, err := v.Verify(ctx, rotated); err != nil {
		t.Fatalf("Verify(new key) after refresh = %v", err)
	}
}

// TestIssuerOutage: before any key set, an unreachable JWKS is
// ErrUnavailable (retryable) and is not retried more than once per
// interval; after one, a failing refresh keeps the old set.
func TestIssuerOutage(t *testing.T) {
	is, clk, v := setup(t, func(cfg *Config) {
		cfg.RefreshInterval = 10 * time.Second
		cfg.MaxKeyAge = time.Minute
	})
	ctx := context.Background()
	tok := is.rs256(t, "rsa-1")

	is.setFail(true)
	for i := 0; i < 50; i++ {
		_, err := v.Verify(ctx, tok)
		var ve *Error
		if !errors.Is(err, ErrUnavailable) || !errors.As(err, &ve) || !ve.Retryable() {
			t.Fatalf("Verify while the JWKS fails = %v, want a retryable ErrUnavailable", err)
		}
		checkNoToken(t, err, tok)
	}
	if err := v.Ready(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready = %v, want ErrUnavailable", err)
	}
	is.wantFetches(t, 1, "JWKS fetches while failing = %d, want 1")
	is.setFail(false)
	clk.SetTime(t0.Add(10 * time.Second))
	if err := v.Ready(ctx); err != nil {
		t.Fatalf("Ready after the outage: %v", err)
	}
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("Verify after the outage: %v", err)
	}
	// The set ages while the issuer is down again. A new key ID is not the
	// token's fault while the refresh fails; the old set stays in use.
	is.setFail(true)
	clk.SetTime(t0.Add(10*time.Second + time.Minute))
	if _, err := v.Verify(ctx, is.rs256(t, "new")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Verify(new kid, refresh failing) = %v, want ErrUnavailable", err)
	}
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("Verify with a stale set during an outage: %v", err)
	}
	is.wantFetches(t, 3, "JWKS fetches = %d, want 3")
}

// TestDiscoveryIssuerMismatch: a discovery document naming another issuer
// is refused (OIDC Discovery 4.3), and nothing verifies.
func TestDiscoveryIssuerMismatch(t *testing.T) {
	is := newIssuer(t)
	is.docIss = "https://evil.example"
	v := newVerifier(t, is.config(clocktesting.NewFakePassiveClock(t0)))
	_, err := v.Verify(context.Background(), is.rs256(t, "rsa-1"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Verify = %v, want ErrUnavailable", err)
	}
	is.wantFetches(t, 0, "JWKS fetched %d times after a bad discovery document")
}

// TestKeySetFiltering: only usable public signing keys are kept.
func TestKeySetFiltering(t *testing.T) {
	testKeys(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: rsaKey.Public(), KeyID: "ok-rsa", Use: "sig"},
		{Key: ecKey.Public(), KeyID: "ok-ec", Algorithm: "ES256"},
		{Key: []byte("symmetric secret"), KeyID: "oct", Algorithm: "HS256", Use: "sig"},
		{Key: small.Public(), KeyID: "small", Algorithm: "RS256"},
		{Key: rsaKey.Public(), KeyID: "enc", Use: "enc"},
		{Key: rsaKey.Public(), KeyID: "pss", Algorithm: "PS256"},
		{Key: rsaKey.Public(), KeyID: "wrong-alg", Algorithm: "ES256"},
		{Key: rsaKey.Public(), Algorithm: "RS256"}, // no kid
		{Key: rsaKey, KeyID: "private", Algorithm: "RS256"},
	}}
	body, err := jsonMarshal(set)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := parseKeySet(body, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for kid := range keys {
		got = append(got, kid)
	}
	if len(keys) != 2 || keys["ok-rsa"].alg != jose.RS256 || keys["ok-ec"].alg != jose.ES256 {
		t.Fatalf("kept %v, want ok-rsa (RS256) and ok-ec (ES256)", got)
	}
	// RS256 only: the EC key goes too.
	keys, err = parseKeySet(body, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil || len(keys) != 1 {
		t.Fatalf("RS256 only: %v keys, %v", len(keys), err)
	}
	if _, err := parseKeySet([]byte(`{"keys":[]}`), []jose.SignatureAlgorithm{jose.RS256}); err == nil {
		t.Fatal("an empty key set was accepted")
	}
}
