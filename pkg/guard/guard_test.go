package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

// jsonError stands in for awscreds.WriteError, so that these tests do not
// depend on the broker; cmd/agent tests run the real one.
func jsonError(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) int {
	if retryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(int(retryAfter.Round(time.Second)/time.Second)))
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": message})
	return status
}

type handlerEnv struct {
	t      *testing.T
	clock  *clocktesting.FakeClock
	m      *Metrics
	h      *Handler
	served int
}

func newHandlerEnv(t *testing.T, mutate func(*HandlerConfig)) *handlerEnv {
	t.Helper()
	e := &handlerEnv{t: t, clock: clocktesting.NewFakeClock(t0)}
	m := NewMetrics(prometheus.NewRegistry())
	e.m = m
	cfg := HandlerConfig{
		Next: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			e.served++
			w.WriteHeader(http.StatusOK)
		}),
		Rules: Rules{WriteError: jsonError}, Metrics: m, Clock: e.clock,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	return e
}

func (e *handlerEnv) do(addr string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/v1/credentials", nil)
	req.RemoteAddr = netip.AddrPortFrom(netip.MustParseAddr(addr), 40000).String()
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec
}

func errCode(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("error body is not JSON: %v: %q", err, rec.Body.String())
	}
	return body["code"]
}

func TestHandlerRefusesForwardedRequests(t *testing.T) {
	e := newHandlerEnv(t, nil)
	for _, h := range []string{"X-Forwarded-For", "x-forwarded-for", "Forwarded", "Via", "X-Real-IP", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		t.Run(h, func(t *testing.T) {
			// An empty value counts too: the header's presence says a proxy
			// is in between.
			for _, v := range []string{"10.0.0.9", ""} {
				rec := e.do("10.0.0.1", map[string]string{h: v})
				if rec.Code != http.StatusBadRequest || errCode(t, rec) != CodeForwarded {
					t.Fatalf("%s: %q: status %d body %q; want 400 %s", h, v, rec.Code, rec.Body, CodeForwarded)
				}
			}
		})
	}
	if e.served != 0 {
		t.Fatalf("%d forwarded requests reached the broker", e.served)
	}
	if got := testutil.ToFloat64(e.m.forwarded); got != 14 {
		t.Fatalf("forwarded refusals counted %v, want 14", got)
	}
	if rec := e.do("10.0.0.1", map[string]string{"X-Forwarded-Client-Cert": "x", "User-Agent": "aws-sdk-go-v2"}); rec.Code != http.StatusOK {
		t.Fatalf("a request without forwarding headers: %d", rec.Code)
	}
}

func TestHandlerRequireAuthorization(t *testing.T) {
	off := newHandlerEnv(t, nil)
	if rec := off.do("10.0.0.1", nil); rec.Code != http.StatusOK {
		t.Fatalf("authorization not required, no header: %d", rec.Code)
	}
	on := newHandlerEnv(t, func(c *HandlerConfig) { c.RequireAuthorization = true })
	for _, hdr := range []map[string]string{nil, {"Authorization": ""}} {
		rec := on.do("10.0.0.1", hdr)
		if rec.Code != http.StatusUnauthorized || errCode(t, rec) != CodeUnauthorized {
			t.Fatalf("%v: status %d body %q; want 401", hdr, rec.Code, rec.Body)
		}
	}
	if rec := on.do("10.0.0.1", map[string]string{"Authorization": "anything"}); rec.Code != http.StatusOK {
		t.Fatalf("with a header: %d", rec.Code)
	}
	if on.served != 1 || testutil.ToFloat64(on.m.unauthorized) != 2 {
		t.Fatalf("served %d, unauthorized counted %v", on.served, testutil.ToFloat64(on.m.unauthorized))
	}
}

func TestHandlerRateLimitPerAddress(t *testing.T) {
	e := newHandlerEnv(t, func(c *HandlerConfig) { c.RequestQPS, c.RequestBurst = 2, 5 })
	for i := range 5 {
		if rec := e.do("10.0.0.1", nil); rec.Code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, rec.Code)
		}
	}
	rec := e.do("10.0.0.1", nil)
	if rec.Code != http.StatusTooManyRequests || errCode(t, rec) != CodeRateLimited || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("past the burst: status %d Retry-After %q body %q", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	// The IPv4-mapped form of the same address shares the bucket.
	if rec := e.do("::ffff:10.0.0.1", nil); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("mapped address escaped the limit: %d", rec.Code)
	}
	// Another pod is not affected.
	if rec := e.do("10.0.0.2", nil); rec.Code != http.StatusOK {
		t.Fatalf("another address: %d", rec.Code)
	}
	e.clock.Step(500 * time.Millisecond) // one token at 2/s
	if rec := e.do("10.0.0.1", nil); rec.Code != http.StatusOK {
		t.Fatalf("after refill: %d", rec.Code)
	}
	if e.served != 7 || testutil.ToFloat64(e.m.rateLimited) != 2 {
		t.Fatalf("served %d, rate limited %v", e.served, testutil.ToFloat64(e.m.rateLimited))
	}
}

func TestHandlerRetryAfterCoversTheWait(t *testing.T) {
	e := newHandlerEnv(t, func(c *HandlerConfig) { c.RequestQPS, c.RequestBurst = 0.2, 1 })
	e.do("10.0.0.1", nil)
	if got := e.do("10.0.0.1", nil).Header().Get("Retry-After"); got != "5" {
		t.Fatalf("Retry-After %q at 0.2/s, want 5", got)
	}
}

func TestHandlerTableIsBounded(t *testing.T) {
	e := newHandlerEnv(t, func(c *HandlerConfig) { c.MaxAddrs = 8 })
	for i := range 1000 {
		e.do(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).String(), nil)
	}
	if n := e.h.limit.addrs.Len(); n != 8 {
		t.Fatalf("rate-limiter table holds %d addresses, want the bound 8", n)
	}
}

// The table evicts the least recently used address: one that asks every
// second keeps its bucket, and with it the tokens it has spent, while new
// addresses churn through the table around it.
func TestHandlerTableKeepsAnAddressThatAsks(t *testing.T) {
	e := newHandlerEnv(t, func(c *HandlerConfig) { c.MaxAddrs, c.RequestQPS, c.RequestBurst = 8, 0.001, 40 })
	next := 0
	for i := range 40 {
		e.clock.Step(time.Second)
		if rec := e.do("10.0.0.1", nil); rec.Code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, rec.Code)
		}
		for range 7 {
			next++
			e.do(netip.AddrFrom4([4]byte{10, 2, byte(next >> 8), byte(next)}).String(), nil)
		}
	}
	// A fresh bucket (the address evicted and added again) would allow
	// this request.
	if rec := e.do("10.0.0.1", nil); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("the 41st request of a 40-request burst: %d, want 429 (its bucket was evicted)", rec.Code)
	}
	if e.h.limit.addrs.Len() != 8 {
		t.Fatalf("table holds %d addresses, want 8", e.h.limit.addrs.Len())
	}
}

// One Handler per surface, one Limiter for all: each surface writes the
// guard's refusals in its own format and decides whether Authorization is
// required, and a pod has one request budget, not one per surface.
func TestHandlersPerSurfaceShareOneLimiter(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	clk := clocktesting.NewFakeClock(t0)
	lim, err := NewLimiter(LimiterConfig{RequestQPS: 1, RequestBurst: 3, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	// textError stands in for a surface whose errors are not JSON.
	textError := func(w http.ResponseWriter, status int, code, message string, _ time.Duration) int {
		w.Header().Set("Metadata-Flavor", "Google")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, code+": "+message+"\n")
		return status
	}
	strict, err := NewHandler(HandlerConfig{Next: ok, Rules: Rules{WriteError: jsonError, RequireAuthorization: true}, Metrics: m, Limiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	text, err := NewHandler(HandlerConfig{Next: ok, Rules: Rules{WriteError: textError}, Metrics: m, Limiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	do := func(h http.Handler, hdr map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.RemoteAddr = "10.0.0.1:40000"
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := do(text, nil); rec.Code != http.StatusOK {
		t.Fatalf("no Authorization on a surface that does not require it: %d %q", rec.Code, rec.Body)
	}
	if rec := do(strict, nil); rec.Code != http.StatusUnauthorized || errCode(t, rec) != CodeUnauthorized {
		t.Fatalf("no Authorization on the surface that requires it: %d %q", rec.Code, rec.Body)
	}
	if rec := do(text, map[string]string{"Via": "proxy"}); rec.Code != http.StatusBadRequest ||
		rec.Body.String() != CodeForwarded+": "+msgForwarded+"\n" || rec.Header().Get("Metadata-Flavor") != "Google" {
		t.Fatalf("forwarded, on the text surface: %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
	// Three requests took the burst of three, across both surfaces.
	rec := do(text, nil)
	if rec.Code != http.StatusTooManyRequests || !strings.HasPrefix(rec.Body.String(), CodeRateLimited+": ") || rec.Header().Get("Metadata-Flavor") != "Google" {
		t.Fatalf("past the shared burst, text surface: %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
	rec = do(strict, map[string]string{"Authorization": "x"})
	if rec.Code != http.StatusTooManyRequests || errCode(t, rec) != CodeRateLimited || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("past the shared burst, JSON surface: %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
	clk.Step(time.Second)
	if rec := do(strict, map[string]string{"Authorization": "x"}); rec.Code != http.StatusOK {
		t.Fatalf("after refill: %d", rec.Code)
	}
	if _, err := NewHandler(HandlerConfig{Next: ok, Rules: Rules{WriteError: jsonError}, Metrics: m, Limiter: lim, RequestQPS: 5}); err == nil {
		t.Fatal("a Handler with a shared Limiter and limits of its own was accepted")
	}
}

// The accepting path is on every cache hit: it must not allocate.
func TestHandlerAcceptDoesNotAllocate(t *testing.T) {
	e := newHandlerEnv(t, func(c *HandlerConfig) { c.RequestQPS, c.Clock = 1e9, nil; c.RequireAuthorization = true })
	req := httptest.NewRequest(http.MethodGet, "/v1/credentials", nil)
	req.RemoteAddr = "10.0.0.1:40000"
	req.Header.Set("Authorization", "x")
	w := discard{h: http.Header{}}
	e.h.ServeHTTP(w, req)
	if n := testing.AllocsPerRun(1000, func() { e.h.ServeHTTP(w, req) }); n != 0 {
		t.Fatalf("%v allocations per accepted request", n)
	}
}

type discard struct{ h http.Header }

func (d discard) Header() http.Header         { return d.h }
func (d discard) WriteHeader(int)             {}
func (d discard) Write(p []byte) (int, error) { return len(p), nil }

func TestConnLimiter(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	c, err := NewConnLimiter(3, m)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := c.Listener(raw)
	defer ln.Close()

	accepted := make(chan net.Conn)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- conn
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		conn, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	var server []net.Conn
	for range 3 {
		dial("127.0.0.1")
		server = append(server, <-accepted)
	}
	// The fourth and fifth are closed at accept: the client reads EOF,
	// and Accept never hands them out.
	for range 2 {
		conn := dial("127.0.0.1")
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
			t.Fatalf("excess connection not closed: %v", err)
		}
	}
	// Another address has its own allowance.
	dial("127.0.0.2")
	other := <-accepted
	if got := c.Open(netip.MustParseAddr("127.0.0.1")); got != 3 {
		t.Fatalf("open from 127.0.0.1: %d", got)
	}
	// A slot comes back on close, once however often Close is called.
	server[0].Close()
	server[0].Close()
	if got := c.Open(netip.MustParseAddr("127.0.0.1")); got != 2 {
		t.Fatalf("after one close: %d open", got)
	}
	dial("127.0.0.1")
	server = append(server[1:], <-accepted)
	for _, s := range append(server, other) {
		s.Close()
	}
	c.mu.Lock()
	left := len(c.conns)
	c.mu.Unlock()
	if left != 0 || testutil.ToFloat64(m.refusedConnections) != 2 || testutil.ToFloat64(m.openConnections) != 0 {
		t.Fatalf("table %d entries, refused %v, open gauge %v", left, testutil.ToFloat64(m.refusedConnections), testutil.ToFloat64(m.openConnections))
	}
	ln.Close()
	for range accepted {
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

type logEnv struct {
	buf   *bytes.Buffer
	mu    *sync.Mutex
	clock *clocktesting.FakeClock
	m     *Metrics
	lim   *LogLimiter
	log   *slog.Logger
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newLogEnv(t *testing.T, maxAddrs int, clk clock.WithTicker) *logEnv {
	t.Helper()
	e := &logEnv{buf: &bytes.Buffer{}, mu: &sync.Mutex{}, clock: clocktesting.NewFakeClock(t0)}
	if clk == nil {
		clk = e.clock
	}
	m := NewMetrics(prometheus.NewRegistry())
	e.m = m
	lim, err := NewLogLimiter(LogConfig{
		Inner: slog.NewJSONHandler(lockedWriter{e.mu, e.buf}, nil),
		Key:   "remote_addr", Burst: 5, Interval: time.Minute, MaxAddrs: maxAddrs, Metrics: m, Clock: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.lim = lim
	e.log = slog.New(lim).With("component", "broker")
	return e
}

func (e *logEnv) lines() []map[string]any {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(e.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			panic(err)
		}
		out = append(out, m)
	}
	e.buf.Reset()
	return out
}

func TestLogLimiterPerAddress(t *testing.T) {
	e := newLogEnv(t, 0, nil)
	for range 1000 {
		e.log.Info("credentials request refused", "remote_addr", "10.0.0.1", "reason", "DefaultServiceAccount")
	}
	e.log.Info("credentials request refused", "remote_addr", "10.0.0.2")
	e.log.Info("agent starting") // no address: never limited
	got := e.lines()
	if len(got) != 7 {
		t.Fatalf("%d lines for 1000 refusals from one address plus two others, want 5+1+1", len(got))
	}
	if testutil.ToFloat64(e.m.logSuppressed) != 995 {
		t.Fatalf("suppressed counted %v", testutil.ToFloat64(e.m.logSuppressed))
	}
	// Within the window, nothing more; after it, the next line from the
	// address is preceded by the count, with the logger's attributes.
	e.log.Warn("credentials request refused", "remote_addr", "10.0.0.1")
	if n := len(e.lines()); n != 0 {
		t.Fatalf("%d lines past the budget", n)
	}
	e.clock.Step(time.Minute)
	e.log.Info("credentials request refused", "remote_addr", "10.0.0.1")
	got = e.lines()
	if len(got) != 2 || got[0]["suppressed"] != float64(996) || got[0]["remote_addr"] != "10.0.0.1" ||
		got[0]["component"] != "broker" || got[0]["level"] != "WARN" {
		t.Fatalf("after the window: %v", got)
	}
}

func TestLogLimiterSweepWritesCountAndForgets(t *testing.T) {
	e := newLogEnv(t, 0, nil)
	for range 8 {
		e.log.Info("refused", "remote_addr", "10.0.0.1")
	}
	e.log.Info("refused", "remote_addr", "10.0.0.2")
	e.lines()
	e.lim.Sweep(context.Background())
	if n := len(e.lines()); n != 0 {
		t.Fatalf("sweep inside the window wrote %d lines", n)
	}
	e.clock.Step(time.Minute)
	e.lim.Sweep(context.Background())
	got := e.lines()
	if len(got) != 1 || got[0]["suppressed"] != float64(3) {
		t.Fatalf("sweep after the window: %v", got)
	}
	if n := e.lim.st.entries.Len(); n != 0 {
		t.Fatalf("%d addresses still tracked after the sweep", n)
	}
}

func TestLogLimiterTableIsBounded(t *testing.T) {
	e := newLogEnv(t, 4, nil)
	for range 6 {
		e.log.Info("refused", "remote_addr", "10.0.0.1")
	}
	e.lines()
	for i := range 1000 {
		e.log.Info("refused", "remote_addr", fmt.Sprintf("10.1.%d.%d", i>>8, i&255))
	}
	if n := e.lim.st.entries.Len(); n != 4 {
		t.Fatalf("%d addresses tracked, want the bound 4", n)
	}
	// Evicting the address that had dropped lines writes its count.
	found := false
	for _, l := range e.lines() {
		if l["remote_addr"] == "10.0.0.1" && l["suppressed"] == float64(1) {
			found = true
		}
	}
	if !found {
		t.Fatal("the evicted address's count was lost")
	}
}

// Run sweeps on its own: inside a synctest bubble the minute passes at
// once, and synctest.Wait returns when Run has written and is blocked again.
func TestLogLimiterRunSweeps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newLogEnv(t, 0, clock.RealClock{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- e.lim.Run(ctx) }()
		for range 6 {
			e.log.Info("refused", "remote_addr", "10.0.0.1")
		}
		e.lines()
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		if got := e.lines(); len(got) != 1 || got[0]["suppressed"] != float64(1) {
			t.Fatalf("Run's sweep: %v", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
