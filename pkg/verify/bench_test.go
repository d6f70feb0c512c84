package verify

import (
	"context"
	"testing"
)

// BenchmarkVerify: one verification with a warm key cache (no network),
// RS256 with a 2048-bit key as kube-apiserver signs, and ES256.
func BenchmarkVerify(b *testing.B) {
	is, _, v := setup(b, nil)
	ctx := context.Background()
	for _, bc := range []struct {
		name  string
		token string
	}{
		{"RS256", is.rs256(b, "rsa-1")},
		{"ES256", is.es256(b, "ec-1")},
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
	is.wantFetches(b, 1, "JWKS fetched %d times, want 1")
}

// BenchmarkRefuseUnknownKey: a token with an unknown key ID inside the
// refresh interval, the flood case: refused without a fetch.
func BenchmarkRefuseUnknownKey(b *testing.B) {
	is, _, v := setup(b, nil)
	ctx := context.Background()
	if err := v.Ready(ctx); err != nil {
		b.Fatal(err)
	}
	tok := is.rs256(b, "unknown")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err == nil {
			b.Fatal("accepted")
		}
	}
	is.wantFetches(b, 1, "JWKS fetched %d times, want 1")
}
