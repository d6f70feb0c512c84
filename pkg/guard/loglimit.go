package guard

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"k8s.io/utils/clock"
)

// LogConfig configures a LogLimiter. Zero values take the defaults.
type LogConfig struct {
	Inner slog.Handler // required: where the lines that pass go
	// Key is the record attribute that names the caller's address
	// (broker.LogKeyRemoteAddr). Records without it pass untouched: the
	// agent's own lines (start, refresh, shutdown) are never dropped.
	Key      string
	Burst    int           // lines per address per Interval; default DefaultLogBurst
	Interval time.Duration // default DefaultLogInterval
	MaxAddrs int           // addresses tracked; default DefaultMaxAddrs
	Metrics  *Metrics      // required
	Clock    clock.WithTicker
}

// LogLimiter is a slog.Handler that lets through at most Burst records per
// caller address per Interval and drops the rest; for every window in which
// it dropped some, it writes one line saying how many, when the address
// next logs after the window or when Run sweeps. A pod sending a thousand
// refused requests thus writes a handful of lines, not a thousand.
type LogLimiter struct {
	inner slog.Handler
	st    *logState
}

type logState struct {
	key      string
	burst    int
	interval time.Duration
	clock    clock.WithTicker
	m        *Metrics

	mu      sync.Mutex
	entries *simplelru.LRU[string, *logEntry] // owned by mu
	pending []logSummary                      // owned by mu; filled by the eviction callback
}

type logEntry struct {
	start      time.Time
	passed     int
	suppressed int
	level      slog.Level   // highest level among the suppressed records
	h          slog.Handler // the handler (with its attributes) that dropped them
}

type logSummary struct {
	addr string
	e    logEntry
}

// NewLogLimiter returns the limiting handler.
func NewLogLimiter(cfg LogConfig) (*LogLimiter, error) {
	switch {
	case cfg.Inner == nil:
		return nil, errors.New("guard: LogConfig.Inner is required")
	case cfg.Key == "":
		return nil, errors.New("guard: LogConfig.Key is required")
	case cfg.Metrics == nil:
		return nil, errNoMetrics
	case cfg.Burst < 0, cfg.Interval < 0, cfg.MaxAddrs < 0:
		return nil, errors.New("guard: negative log limit")
	}
	cfg.Burst = cmp.Or(cfg.Burst, DefaultLogBurst)
	cfg.Interval = cmp.Or(cfg.Interval, DefaultLogInterval)
	cfg.MaxAddrs = cmp.Or(cfg.MaxAddrs, DefaultMaxAddrs)
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	st := &logState{key: cfg.Key, burst: cfg.Burst, interval: cfg.Interval, clock: cfg.Clock, m: cfg.Metrics}
	entries, err := simplelru.NewLRU(cfg.MaxAddrs, func(addr string, e *logEntry) {
		// Called under st.mu, by Add (capacity) and by Remove (sweep).
		if e.suppressed > 0 {
			st.pending = append(st.pending, logSummary{addr: addr, e: *e})
		}
	})
	if err != nil {
		return nil, err
	}
	st.entries = entries
	return &LogLimiter{inner: cfg.Inner, st: st}, nil
}

// Enabled implements slog.Handler.
func (l *LogLimiter) Enabled(ctx context.Context, level slog.Level) bool {
	return l.inner.Enabled(ctx, level)
}

// WithAttrs implements slog.Handler; derived handlers share the budget.
func (l *LogLimiter) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &LogLimiter{inner: l.inner.WithAttrs(attrs), st: l.st}
}

// WithGroup implements slog.Handler.
func (l *LogLimiter) WithGroup(name string) slog.Handler {
	return &LogLimiter{inner: l.inner.WithGroup(name), st: l.st}
}

// Handle implements slog.Handler.
func (l *LogLimiter) Handle(ctx context.Context, r slog.Record) error {
	var addr string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == l.st.key {
			addr = a.Value.String()
			return false
		}
		return true
	})
	if addr == "" {
		return l.inner.Handle(ctx, r)
	}
	st := l.st
	now := st.clock.Now()
	st.mu.Lock()
	e, ok := st.entries.Get(addr)
	switch {
	case !ok:
		e = &logEntry{start: now}
		st.entries.Add(addr, e)
	case now.Sub(e.start) >= st.interval:
		if e.suppressed > 0 {
			st.pending = append(st.pending, logSummary{addr: addr, e: *e})
		}
		*e = logEntry{start: now}
	}
	pass := e.passed < st.burst
	if pass {
		e.passed++
	} else {
		if e.suppressed == 0 || r.Level > e.level {
			e.level = r.Level
		}
		e.suppressed++
		e.h = l.inner
	}
	pending := st.takePending()
	st.mu.Unlock()

	st.emit(ctx, pending)
	if !pass {
		st.m.logSuppressed.Inc()
		return nil
	}
	return l.inner.Handle(ctx, r)
}

// Sweep writes the count for every address whose window has ended with
// records dropped, and forgets those addresses.
func (l *LogLimiter) Sweep(ctx context.Context) {
	st := l.st
	now := st.clock.Now()
	st.mu.Lock()
	for _, addr := range st.entries.Keys() {
		if e, ok := st.entries.Peek(addr); ok && now.Sub(e.start) >= st.interval {
			st.entries.Remove(addr) // queues its count, if any
		}
	}
	pending := st.takePending()
	st.mu.Unlock()
	st.emit(ctx, pending)
}

// Run sweeps once per Interval until ctx ends, so that the count of a pod
// that stopped logging is still written and its entry freed.
func (l *LogLimiter) Run(ctx context.Context) error {
	t := l.st.clock.NewTicker(l.st.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			l.Sweep(ctx)
		}
	}
}

func (st *logState) takePending() []logSummary {
	p := st.pending
	st.pending = nil
	return p
}

// emit writes the count lines outside the lock: the inner handler may block
// on its writer.
func (st *logState) emit(ctx context.Context, pending []logSummary) {
	for _, s := range pending {
		if !s.e.h.Enabled(ctx, s.e.level) {
			continue
		}
		rec := slog.NewRecord(st.clock.Now(), s.e.level, "log lines suppressed for this address", 0)
		rec.AddAttrs(slog.String(st.key, s.addr), slog.Int("suppressed", s.e.suppressed),
			slog.Time("since", s.e.start), slog.Duration("window", st.interval))
		_ = s.e.h.Handle(ctx, rec)
	}
}
