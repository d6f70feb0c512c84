// Package loadgen drives HTTP GET load at a credentials endpoint from many
// source addresses, one network namespace per simulated pod, and measures
// throughput, latency percentiles and failures by kind.
//
// Guarantees:
//   - Every run is bounded twice: by Config.Duration (plus warm-up and one
//     request timeout to drain) and by Config.MaxRequests.
//   - Latency is measured from when a request was due, not when it was sent:
//     at a fixed offered rate a request that waits for a free worker counts
//     its wait (no coordinated omission). Only the generator's own timer
//     slack (Go timers wake up to ~1 ms late) is not charged. In a closed
//     loop due and sent are the same moment.
//   - Percentiles are exact: every latency in the window is kept and sorted.
//   - Request i goes to source i mod len(Sources), so load is spread evenly
//     over the simulated pods whatever the concurrency.
//
// The client is a bare HTTP/1.1 writer plus net/http's response parser, not
// http.Client: on a 2-core machine the generator shares the CPU with the
// server under test, and the lighter it is the more the figures say about
// the server.
package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Mode says how connections are used.
type Mode int

const (
	// KeepAlive reuses a connection per simulated pod across requests.
	KeepAlive Mode = iota + 1
	// NewConn opens a connection per request and asks the server to close
	// it (Connection: close), as an SDK whose HTTP client keeps no pool does.
	NewConn
)

func (m Mode) String() string {
	switch m {
	case KeepAlive:
		return "keepalive"
	case NewConn:
		return "newconn"
	default:
		return "unknown"
	}
}

// ParseMode parses "keepalive" or "newconn".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "keepalive", "keep-alive":
		return KeepAlive, nil
	case "newconn", "new-conn", "close":
		return NewConn, nil
	}
	return 0, fmt.Errorf("unknown connection mode %q (want keepalive or newconn)", s)
}

// MarshalText makes Mode readable in JSON.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses Mode from JSON.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Dialer opens a connection from one simulated pod.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Config describes one load run.
type Config struct {
	// Addr is the server's host:port, an IP literal.
	Addr string
	// Path is the request path; default /v1/credentials.
	Path string
	// Header lines added to every request, each "Name: value" without CRLF.
	Header []string
	// Sources are the simulated pods, each a way to open a connection from
	// the pod's address: a *Namespace, or integration/netns's. A nil entry,
	// or an empty slice, dials from this process's own namespace.
	Sources []Dialer
	// Mode is KeepAlive or NewConn; default KeepAlive.
	Mode Mode
	// Concurrency is the number of requests in flight in a closed loop
	// (Rate 0), and the most in flight at a fixed rate. Default 1.
	Concurrency int
	// Rate is the offered load in requests per second; 0 runs a closed loop
	// where each worker sends its next request as soon as the last one ends.
	Rate float64
	// Warmup runs the same load first without recording it.
	Warmup time.Duration
	// Duration is the measured window. Required.
	Duration time.Duration
	// MaxRequests caps the requests sent, warm-up included. Default 10
	// million.
	MaxRequests int64
	// Timeout bounds each request, dial included. Default 2s.
	Timeout time.Duration
	// ServerPID, if set, is a process whose CPU time over the window is
	// reported beside the generator's own.
	ServerPID int
	// KeepSamples keeps every latency in Result.Samples, for Merge.
	KeepSamples bool
}

// Latency summarises the latencies of successful requests.
type Latency struct {
	Count int64         `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Result is what a run measured in its window.
type Result struct {
	Mode        Mode    `json:"mode"`
	Rate        float64 `json:"offered_rate"`
	Concurrency int     `json:"concurrency"`
	Sources     int     `json:"sources"`
	// Sent counts requests started in the window.
	Sent int64 `json:"sent"`
	// OK counts 200 responses to them.
	OK int64 `json:"ok"`
	// Outcomes counts every outcome by kind: an HTTP status code ("200",
	// "503"), or "dial", "timeout", "io" for requests that got no response.
	Outcomes map[string]int64 `json:"outcomes"`
	// Unsent counts requests that were due in the window at a fixed rate but
	// never started because every worker was busy: the server (or the
	// generator) could not keep up with the offered load.
	Unsent     int64         `json:"unsent"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"throughput"`
	Latency    Latency       `json:"latency"`
	// Total counts every request that got an answer or failed, warm-up
	// included: what the server handled during the whole run.
	Total int64 `json:"total"`
	// BodyBytes is the size of the last successful response body.
	BodyBytes int `json:"body_bytes"`
	// ClientCPU and ServerCPU are user+system CPU time over the window.
	ClientCPU time.Duration `json:"client_cpu_ns"`
	ServerCPU time.Duration `json:"server_cpu_ns,omitempty"`
	// Samples are the sorted latencies of the successful requests, kept
	// when Config.KeepSamples is set.
	Samples []time.Duration `json:"-"`
}

// Merge pools runs of the same load into one result, as if they were one
// run whose window is the sum of theirs. Latency percentiles are exact when
// every run kept its samples; otherwise the result has none.
func Merge(runs ...*Result) *Result {
	if len(runs) == 0 {
		return nil
	}
	m := &Result{
		Mode: runs[0].Mode, Rate: runs[0].Rate, Concurrency: runs[0].Concurrency, Sources: runs[0].Sources,
		Outcomes: make(map[string]int64),
	}
	var all []time.Duration
	exact := true
	for _, r := range runs {
		m.Sent += r.Sent
		m.OK += r.OK
		m.Unsent += r.Unsent
		m.Total += r.Total
		m.Elapsed += r.Elapsed
		m.ClientCPU += r.ClientCPU
		m.ServerCPU += r.ServerCPU
		for k, v := range r.Outcomes {
			m.Outcomes[k] += v
		}
		if r.BodyBytes > 0 {
			m.BodyBytes = r.BodyBytes
		}
		if int64(len(r.Samples)) != r.Latency.Count {
			exact = false
		}
		all = append(all, r.Samples...)
	}
	if m.Elapsed > 0 {
		m.Throughput = float64(m.OK) / m.Elapsed.Seconds()
	}
	if exact {
		m.Latency = Summarise(all)
		m.Samples = all
	}
	return m
}

// ErrorRate is the share of requests that did not get a 200.
func (r *Result) ErrorRate() float64 {
	if r.Sent == 0 {
		return 0
	}
	return float64(r.Sent-r.OK) / float64(r.Sent)
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if cfg.Addr == "" {
		return cfg, errors.New("loadgen: no address")
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return cfg, fmt.Errorf("loadgen: address %q: %w", cfg.Addr, err)
	}
	if cfg.Duration <= 0 {
		return cfg, errors.New("loadgen: duration must be positive")
	}
	if cfg.Rate < 0 {
		return cfg, errors.New("loadgen: rate must not be negative")
	}
	if cfg.Path == "" {
		cfg.Path = "/v1/credentials"
	}
	if len(cfg.Sources) == 0 {
		cfg.Sources = []Dialer{nil}
	}
	if cfg.Mode == 0 {
		cfg.Mode = KeepAlive
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = 10_000_000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	for _, h := range cfg.Header {
		if strings.ContainsAny(h, "\r\n") || !strings.Contains(h, ":") {
			return cfg, fmt.Errorf("loadgen: bad header line %q", h)
		}
	}
	return cfg, nil
}

// pool keeps one source's idle keep-alive connections.
type pool struct {
	mu   sync.Mutex
	idle []*conn
}

type conn struct {
	nc net.Conn
	br *bufio.Reader
}

type job struct {
	seq int64
	// due decides whether the request falls in the window; begin is when
	// its latency starts (see schedule).
	due, begin time.Time
}

// worker owns its samples, so recording takes no lock.
type worker struct {
	lat      []time.Duration
	outcomes map[string]int64
	sent     int64
	ok       int64
	body     int
}

type runner struct {
	cfg     Config
	request []byte
	pools   []pool
	dialer  net.Dialer
	sent    atomic.Int64 // requests started, warm-up included
	done    atomic.Int64 // requests finished, warm-up included
	seq     atomic.Int64 // next source in a closed loop
	// measureFrom and measureTo bound the window; a request counts if it
	// was due inside it.
	measureFrom time.Time
	measureTo   time.Time
}

// Run drives the load described by cfg and returns what it measured. It
// returns early, with what it has, when ctx ends.
func Run(ctx context.Context, c Config) (*Result, error) {
	cfg, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, pools: make([]pool, len(cfg.Sources))}
	r.request = buildRequest(cfg)

	start := time.Now()
	r.measureFrom = start.Add(cfg.Warmup)
	r.measureTo = r.measureFrom.Add(cfg.Duration)
	// Workers stop starting requests at the window's end; the ones in
	// flight get one timeout to finish.
	runCtx, cancel := context.WithDeadline(ctx, r.measureTo.Add(cfg.Timeout))
	defer cancel()

	var cpu0 atomic.Pointer[cpuSample]
	cpuTimer := time.AfterFunc(cfg.Warmup, func() {
		s := sampleCPU(cfg.ServerPID)
		cpu0.Store(&s)
	})

	workers := make([]*worker, cfg.Concurrency)
	for i := range workers {
		workers[i] = &worker{outcomes: make(map[string]int64)}
	}
	var wg sync.WaitGroup
	var unsent int64
	if cfg.Rate == 0 {
		for _, w := range workers {
			wg.Go(func() { r.closedLoop(runCtx, w) })
		}
	} else {
		jobs := make(chan job, cfg.Concurrency)
		for _, w := range workers {
			wg.Go(func() { r.openLoop(runCtx, w, jobs) })
		}
		unsent = r.schedule(runCtx, jobs, start)
		close(jobs)
	}
	wg.Wait()
	cpuTimer.Stop()
	cpu1 := sampleCPU(cfg.ServerPID)
	r.closeIdle()

	res := &Result{
		Mode:        cfg.Mode,
		Rate:        cfg.Rate,
		Concurrency: cfg.Concurrency,
		Sources:     len(cfg.Sources),
		Outcomes:    make(map[string]int64),
		Unsent:      unsent,
		Total:       r.done.Load(),
		Elapsed:     cfg.Duration,
	}
	if now := time.Now(); now.Before(r.measureTo) {
		// Cut short by ctx or by MaxRequests.
		res.Elapsed = max(now.Sub(r.measureFrom), time.Millisecond)
	}
	var all []time.Duration
	for _, w := range workers {
		res.Sent += w.sent
		res.OK += w.ok
		for k, v := range w.outcomes {
			res.Outcomes[k] += v
		}
		all = append(all, w.lat...)
		if w.body > 0 {
			res.BodyBytes = w.body
		}
	}
	res.Throughput = float64(res.OK) / res.Elapsed.Seconds()
	res.Latency = Summarise(all)
	if cfg.KeepSamples {
		res.Samples = all
	}
	if c0 := cpu0.Load(); c0 != nil {
		res.ClientCPU = cpu1.self - c0.self
		if cfg.ServerPID > 0 {
			res.ServerCPU = cpu1.server - c0.server
		}
	}
	return res, nil
}

func buildRequest(cfg Config) []byte {
	host, _, _ := net.SplitHostPort(cfg.Addr)
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: credbroker-loadgen\r\n", cfg.Path, host)
	for _, h := range cfg.Header {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	if cfg.Mode == NewConn {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// take claims the right to send one more request under MaxRequests.
func (r *runner) take() bool {
	return r.sent.Add(1) <= r.cfg.MaxRequests
}

func (r *runner) closedLoop(ctx context.Context, w *worker) {
	for ctx.Err() == nil {
		due := time.Now()
		if !due.Before(r.measureTo) || !r.take() {
			return
		}
		seq := r.seq.Add(1) - 1
		r.do(ctx, w, seq, due, due)
	}
}

func (r *runner) openLoop(ctx context.Context, w *worker, jobs <-chan job) {
	for j := range jobs {
		if ctx.Err() != nil {
			continue // drain so the scheduler never blocks
		}
		r.do(ctx, w, j.seq, j.due, j.begin)
	}
}

// schedule hands out requests at the offered rate until the window ends,
// and returns how many in the window found no free worker.
//
// Go's timers wake a sleeper up to about a millisecond late, so requests are
// released in small bursts. A request counts its latency from the later of
// its due time and the scheduler's last wake-up: the generator's own timer
// slack is not charged to the server, but a request held back because every
// worker was busy is charged from when it was due.
func (r *runner) schedule(ctx context.Context, jobs chan<- job, start time.Time) int64 {
	interval := time.Duration(float64(time.Second) / r.cfg.Rate)
	if interval <= 0 {
		interval = 1
	}
	var unsent int64
	wake := start
	for seq := int64(0); ; seq++ {
		due := start.Add(time.Duration(seq) * interval)
		if !due.Before(r.measureTo) || ctx.Err() != nil {
			return unsent
		}
		if wait := time.Until(due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return unsent
			}
			wake = time.Now()
		}
		if !r.take() {
			return unsent
		}
		j := job{seq: seq, due: due, begin: due}
		if wake.After(due) {
			j.begin = wake
		}
		select {
		case jobs <- j:
		default:
			select {
			case jobs <- j:
			case <-ctx.Done():
				return unsent
			case <-time.After(time.Until(r.measureTo)):
				// The window ended with this request and every later one
				// due in it never started.
				for d := due; d.Before(r.measureTo); d = d.Add(interval) {
					if !d.Before(r.measureFrom) {
						unsent++
					}
				}
				return unsent
			}
		}
	}
}

func (r *runner) do(ctx context.Context, w *worker, seq int64, due, begin time.Time) {
	src := int(seq % int64(len(r.cfg.Sources)))
	status, body, err := r.roundTrip(ctx, src)
	lat := time.Since(begin)
	r.done.Add(1)
	if due.Before(r.measureFrom) || !due.Before(r.measureTo) {
		return
	}
	w.sent++
	var key string
	switch {
	case err == nil:
		key = strconv.Itoa(status)
	case errors.Is(err, errDial):
		key = "dial"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		key = "timeout"
	default:
		key = "io"
	}
	w.outcomes[key]++
	if err == nil && status == http.StatusOK {
		w.ok++
		w.lat = append(w.lat, lat)
		w.body = body
	}
}

var errDial = errors.New("dial")

// roundTrip sends one request from source src and reads the whole response.
func (r *runner) roundTrip(ctx context.Context, src int) (status, bodyLen int, err error) {
	c, err := r.get(ctx, src)
	if err != nil {
		return 0, 0, err
	}
	c.nc.SetDeadline(time.Now().Add(r.cfg.Timeout))
	if _, err := c.nc.Write(r.request); err != nil {
		c.nc.Close()
		return 0, 0, fmt.Errorf("writing request: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.nc.Close()
		return 0, 0, fmt.Errorf("reading response: %w", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		c.nc.Close()
		return 0, 0, fmt.Errorf("reading body: %w", err)
	}
	if r.cfg.Mode == NewConn || resp.Close {
		c.nc.Close()
	} else {
		r.put(src, c)
	}
	return resp.StatusCode, int(n), nil
}

func (r *runner) get(ctx context.Context, src int) (*conn, error) {
	if r.cfg.Mode == KeepAlive {
		p := &r.pools[src]
		p.mu.Lock()
		if n := len(p.idle); n > 0 {
			c := p.idle[n-1]
			p.idle = p.idle[:n-1]
			p.mu.Unlock()
			return c, nil
		}
		p.mu.Unlock()
	}
	dctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	var err error
	var nc net.Conn
	if d := r.cfg.Sources[src]; d != nil {
		nc, err = d.DialContext(dctx, "tcp", r.cfg.Addr)
	} else {
		nc, err = r.dialer.DialContext(dctx, "tcp", r.cfg.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errDial, err)
	}
	return &conn{nc: nc, br: bufio.NewReaderSize(nc, 4096)}, nil
}

func (r *runner) put(src int, c *conn) {
	p := &r.pools[src]
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

func (r *runner) closeIdle() {
	for i := range r.pools {
		for _, c := range r.pools[i].idle {
			c.nc.Close()
		}
		r.pools[i].idle = nil
	}
}

// Summarise computes the percentiles of lat, which it sorts in place.
func Summarise(lat []time.Duration) Latency {
	if len(lat) == 0 {
		return Latency{}
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	return Latency{
		Count: int64(len(lat)),
		Mean:  sum / time.Duration(len(lat)),
		P50:   quantile(lat, 0.50),
		P90:   quantile(lat, 0.90),
		P99:   quantile(lat, 0.99),
		P999:  quantile(lat, 0.999),
		Max:   lat[len(lat)-1],
	}
}

// quantile is the nearest-rank quantile of sorted samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.999999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

type cpuSample struct {
	self   time.Duration
	server time.Duration
}

func sampleCPU(pid int) cpuSample {
	var s cpuSample
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if pid > 0 {
		s.server, _ = ProcessCPU(pid)
	}
	return s
}

// ProcessCPU reads a process's user+system CPU time from /proc.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading CPU time of process %d: %w", pid, err)
	}
	// The command name may hold spaces; fields count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parsing /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// After ')': state is field 3 of stat(5), so utime (14) and stime (15)
	// are at 11 and 12 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("parsing /proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	// Linux reports these in USER_HZ, 100 on every architecture Go runs on.
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}
