package loadgen

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// server counts requests and connections and answers 503 to every
// failEvery-th request (0: never).
type server struct {
	*httptest.Server
	requests atomic.Int64
	conns    atomic.Int64
	failed   atomic.Int64
	mu       sync.Mutex
	closes   int // requests that carried Connection: close
}

func newServer(t *testing.T, failEvery int64) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.requests.Add(1)
		if r.Close {
			s.mu.Lock()
			s.closes++
			s.mu.Unlock()
		}
		if failEvery > 0 && n%failEvery == 0 {
			s.failed.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"AccessKeyId":"x"}`))
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *server) addr() string { return strings.TrimPrefix(s.URL, "http://") }

func TestClosedLoopKeepAliveStopsAtMaxRequests(t *testing.T) {
	s := newServer(t, 0)
	res, err := Run(context.Background(), Config{
		Addr:        s.addr(),
		Concurrency: 4,
		Duration:    time.Minute, // MaxRequests ends the run long before
		MaxRequests: 300,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.requests.Load(); got != 300 {
		t.Errorf("server saw %d requests, want exactly MaxRequests=300", got)
	}
	if res.Sent != 300 || res.OK != 300 || res.Outcomes["200"] != 300 {
		t.Errorf("sent %d ok %d outcomes %v, want 300 of each", res.Sent, res.OK, res.Outcomes)
	}
	if res.Total != 300 {
		t.Errorf("total %d, want 300", res.Total)
	}
	if res.Latency.Count != 300 {
		t.Errorf("latency samples %d, want 300", res.Latency.Count)
	}
	// Four workers over one source reuse at most four connections.
	if got := s.conns.Load(); got > 4 {
		t.Errorf("server saw %d connections, want at most 4 with keep-alive", got)
	}
	if res.BodyBytes != len(`{"AccessKeyId":"x"}`) {
		t.Errorf("body bytes %d", res.BodyBytes)
	}
}

func TestNewConnOpensOneConnectionPerRequest(t *testing.T) {
	s := newServer(t, 0)
	res, err := Run(context.Background(), Config{
		Addr:        s.addr(),
		Mode:        NewConn,
		Concurrency: 3,
		Duration:    time.Minute,
		MaxRequests: 60,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 60 {
		t.Fatalf("ok %d, want 60 (outcomes %v)", res.OK, res.Outcomes)
	}
	if got := s.conns.Load(); got != 60 {
		t.Errorf("server saw %d connections, want one per request (60)", got)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closes != 60 {
		t.Errorf("%d requests asked to close, want 60", s.closes)
	}
}

func TestOutcomesCountedByStatus(t *testing.T) {
	s := newServer(t, 3)
	res, err := Run(context.Background(), Config{
		Addr:        s.addr(),
		Concurrency: 2,
		Duration:    time.Minute,
		MaxRequests: 90,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcomes["503"] != s.failed.Load() || res.Outcomes["503"] != 30 {
		t.Errorf("503 outcomes %d, server failed %d, want 30", res.Outcomes["503"], s.failed.Load())
	}
	if res.OK != 60 || res.Outcomes["200"] != 60 || res.Latency.Count != 60 {
		t.Errorf("ok %d, 200s %d, samples %d; want 60 each (only successes are timed)", res.OK, res.Outcomes["200"], res.Latency.Count)
	}
	if want := 30.0 / 90; res.ErrorRate() != want {
		t.Errorf("error rate %v, want %v", res.ErrorRate(), want)
	}
}

func TestDialFailuresAreCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	res, err := Run(context.Background(), Config{
		Addr:        addr,
		Duration:    time.Minute,
		MaxRequests: 5,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcomes["dial"] != 5 || res.OK != 0 {
		t.Errorf("outcomes %v, want 5 dial failures", res.Outcomes)
	}
}

func TestFixedRateSendsEveryDueRequest(t *testing.T) {
	s := newServer(t, 0)
	res, err := Run(context.Background(), Config{
		Addr:        s.addr(),
		Rate:        1000,
		Concurrency: 50,
		Duration:    200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 1000/s over 200ms puts exactly 200 due times in the window; each is
	// either sent or reported unsent, never lost.
	if res.Sent+res.Unsent != 200 {
		t.Errorf("sent %d + unsent %d, want 200", res.Sent, res.Unsent)
	}
	if res.OK != res.Sent {
		t.Errorf("ok %d of %d sent: %v", res.OK, res.Sent, res.Outcomes)
	}
}

func TestWarmupIsNotRecorded(t *testing.T) {
	s := newServer(t, 0)
	res, err := Run(context.Background(), Config{
		Addr:     s.addr(),
		Rate:     500,
		Warmup:   100 * time.Millisecond,
		Duration: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.requests.Load(); got != 100 {
		t.Errorf("server saw %d requests, want 100 (50 warm-up + 50 measured)", got)
	}
	if res.Sent+res.Unsent != 50 {
		t.Errorf("recorded %d sent + %d unsent, want the 50 of the window", res.Sent, res.Unsent)
	}
}

func TestRequestsSpreadOverSources(t *testing.T) {
	s := newServer(t, 0)
	counts := make([]*countingDialer, 5)
	srcs := make([]Dialer, len(counts))
	for i := range counts {
		counts[i] = &countingDialer{}
		srcs[i] = counts[i]
	}
	_, err := Run(context.Background(), Config{
		Addr:        s.addr(),
		Sources:     srcs,
		Mode:        NewConn,
		Concurrency: 3,
		Duration:    time.Minute,
		MaxRequests: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range counts {
		if got := c.n.Load(); got != 10 {
			t.Errorf("source %d dialled %d times, want 10 (50 requests over 5 sources)", i, got)
		}
	}
}

type countingDialer struct{ n atomic.Int64 }

func (c *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func TestQuantileIsNearestRank(t *testing.T) {
	lat := make([]time.Duration, 1000)
	for i := range lat {
		lat[i] = time.Duration(1000-i) * time.Microsecond // unsorted on purpose
	}
	l := Summarise(lat)
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", l.P50, 500 * time.Microsecond},
		{"p90", l.P90, 900 * time.Microsecond},
		{"p99", l.P99, 990 * time.Microsecond},
		{"p99.9", l.P999, 999 * time.Microsecond},
		{"max", l.Max, 1000 * time.Microsecond},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigRejectsUnboundedOrMalformed(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"no duration", Config{Addr: "127.0.0.1:1"}},
		{"no port", Config{Addr: "127.0.0.1", Duration: time.Second}},
		{"negative rate", Config{Addr: "127.0.0.1:1", Duration: time.Second, Rate: -1}},
		{"header injection", Config{Addr: "127.0.0.1:1", Duration: time.Second, Header: []string{"A: b\r\nC: d"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Run(context.Background(), c.cfg); err == nil {
				t.Error("Run accepted it")
			}
		})
	}
}

func TestMergePoolsSamplesExactly(t *testing.T) {
	s := newServer(t, 4)
	var runs []*Result
	for range 3 {
		r, err := Run(context.Background(), Config{
			Addr:        s.addr(),
			Concurrency: 2,
			Duration:    time.Minute,
			MaxRequests: 40,
			KeepSamples: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	m := Merge(runs...)
	if m.Sent != 120 || m.OK != 90 || m.Outcomes["503"] != 30 {
		t.Errorf("merged sent %d ok %d outcomes %v, want 120, 90, 30 of 503", m.Sent, m.OK, m.Outcomes)
	}
	var all []time.Duration
	for _, r := range runs {
		all = append(all, r.Samples...)
	}
	if want := Summarise(all); m.Latency != want {
		t.Errorf("merged latency %+v, want the percentiles of all samples %+v", m.Latency, want)
	}
}
