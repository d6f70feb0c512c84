package awscreds

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/guard"
)

// BenchmarkCacheHitGuarded is BenchmarkCacheHit behind the agent's request
// guard (per-address token bucket, forwarding-header check, Authorization
// required and present), as cmd/agent wires it. Run both in one invocation
// to compare: go test -run='^$' -bench='CacheHit' ./pkg/api/awscreds
//
// The guard uses the real clock and a rate it never refuses at, so every
// request still takes a token: what is measured is the accepting path.
func BenchmarkCacheHitGuarded(b *testing.B) {
	m := guard.NewMetrics(prometheus.NewRegistry())
	surface, err := New(hit("ASIAPODA"), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	h, err := guard.NewHandler(guard.HandlerConfig{Next: surface, Rules: GuardRules(true), Metrics: m,
		RequestQPS: 1e12, RequestBurst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, Path, nil)
	req.RemoteAddr = "10.0.0.1:40000"
	req.Header.Set("Authorization", "any")
	req.Header.Set("User-Agent", "aws-sdk-go-v2/1.0")
	w := surfacetest.NewDiscard()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		b.Fatalf("warm-up request: %d", w.Code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.Header())
		h.ServeHTTP(w, req)
	}
	if w.Code != http.StatusOK {
		b.Fatalf("status %d", w.Code)
	}
}
