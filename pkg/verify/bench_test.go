package verify

import (
	"context"
	"testing"

	"github.com/go-jose/go-jose/v4"
	clocktesting "k8s.io/utils/clock/testing"
)

// BenchmarkVerify: one verification with a warm key cache (no network),
// RS256 with a 2048-bit key as kube-apiserver signs, and ES256.
func BenchmarkVerify(b *testing.B) {
	is := newIssuer(b)
	v := newVerifier(b, is.config(clocktesting.NewFakePassiveClock(t0)))
	ctx := context.Background()
	for _, bc := range []struct {
		name  string
		token string
	}{
		{"RS256", mint(b, rsaKey, jose.RS256, "rsa-1", goodClaims(is.srv.URL))},
		{"ES256", mint(b, ecKey, jose.ES256, "ec-1", goodClaims(is.srv.URL))},
	} {
		if _, err := v.Verify(ctx, bc.token); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, bc.token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if n := is.jwksFetches.Load(); n != 1 {
		b.Fatalf("JWKS fetched %d times, want 1", n)
	}
}

// BenchmarkRefuseUnknownKey: a token with an unknown key ID inside the
// refresh interval, the flood case: refused without a fetch.
func BenchmarkRefuseUnknownKey(b *testing.B) {
	is := newIssuer(b)
	v := newVerifier(b, is.config(clocktesting.NewFakePassiveClock(t0)))
	ctx := context.Background()
	if err := v.Ready(ctx); err != nil {
		b.Fatal(err)
	}
	tok := mint(b, rsaKey, jose.RS256, "unknown", goodClaims(is.srv.URL))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err == nil {
			b.Fatal("accepted")
		}
	}
	if n := is.jwksFetches.Load(); n != 1 {
		b.Fatalf("JWKS fetched %d times, want 1", n)
	}
}
