package broker

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is the cheapest ResponseWriter possible, so that the
// benchmark measures the broker rather than the recorder.
type discardWriter struct {
	h    http.Header
	code int
	n    int
}

func (w *discardWriter) Header() http.Header  { return w.h }
func (w *discardWriter) WriteHeader(code int) { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	return len(p), nil
}

// BenchmarkCacheHit is the whole request path for a cached pod: address
// parsing, pod resolution, role lookup, cache lookup, metrics and the JSON
// answer.
func BenchmarkCacheHit(b *testing.B) {
	e := newEnv(b, nil)
	e.serviceAccount("ns", "sa", roleA)
	e.pod("10.0.0.1", "ns", "p", "sa")
	req := httptest.NewRequest(http.MethodGet, CredentialsPath, nil)
	req.RemoteAddr = "10.0.0.1:40000"
	w := &discardWriter{h: http.Header{}}
	e.broker.ServeHTTP(w, req)
	if w.code != http.StatusOK {
		b.Fatalf("warm-up request: %d", w.code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		e.broker.ServeHTTP(w, req)
	}
	if w.code != http.StatusOK {
		b.Fatalf("status %d", w.code)
	}
}

func BenchmarkCacheHitParallel(b *testing.B) {
	e := newEnv(b, nil)
	e.serviceAccount("ns", "sa", roleA)
	e.pod("10.0.0.1", "ns", "p", "sa")
	req := httptest.NewRequest(http.MethodGet, CredentialsPath, nil)
	req.RemoteAddr = "10.0.0.1:40000"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			e.broker.ServeHTTP(w, req)
		}
	})
}
