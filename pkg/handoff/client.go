package handoff

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/credbroker/agent/pkg/broker"
)

// Sink takes entries one by one: *broker.Broker is one. Import returns
// nil for a taken entry, an *broker.ImportRefusal otherwise.
type Sink interface {
	Import(broker.Carried) error
}

// ReceiveConfig configures Receive. Zero values take the defaults.
type ReceiveConfig struct {
	Path    string // the predecessor's socket
	Sink    Sink   // required
	Metrics *Metrics
	Logger  *slog.Logger // default: discard
	// Timeout bounds the whole hand-off, connecting included. Default 5s.
	Timeout time.Duration
	// MaxEntries caps the entries read. Default 16384 (four times the
	// default --cache-size).
	MaxEntries int
	// MaxEntryBytes caps one entry's frame. Default 64 KiB; an entry is
	// well under 8 KiB (a GCP identity token is the largest credential).
	MaxEntryBytes int
	// MaxBytes caps the whole stream. Default 64 MiB.
	MaxBytes int64
}

// Result is what a hand-off brought. It holds counts only.
type Result struct {
	// Outcome is complete, partial, failed, none or peer_refused.
	Outcome string
	// Offered is how many entries the predecessor announced.
	Offered int
	Taken   int
	// Refused counts entries not taken, by reason (broker.Import* or this
	// package's undecodable and over_limit).
	Refused map[string]int
	Err     error
}

// ErrNoPredecessor means nothing listens at the path: a first start, or a
// predecessor that is gone.
var ErrNoPredecessor = errors.New("handoff: no predecessor listening")

// Receive takes a hand-off from the agent listening at cfg.Path, if any,
// offering each entry to cfg.Sink, and logs one line with the counts. It
// never fails the agent: whatever it did not take, the prefetch fetches.
func Receive(ctx context.Context, cfg ReceiveConfig) Result {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, 5*time.Second)
	cfg.MaxEntries = cmp.Or(cfg.MaxEntries, 16384)
	cfg.MaxEntryBytes = cmp.Or(cfg.MaxEntryBytes, 64<<10)
	cfg.MaxBytes = cmp.Or(cfg.MaxBytes, 64<<20)
	start := time.Now()
	r := receive(ctx, cfg)
	if m := cfg.Metrics; m != nil {
		m.received.WithLabelValues(r.Outcome).Inc()
		m.entries.WithLabelValues(entryTaken).Add(float64(r.Taken))
		for reason, n := range r.Refused {
			m.entries.WithLabelValues(reason).Add(float64(n))
		}
	}
	attrs := []any{"outcome", r.Outcome, "offered", r.Offered, "taken", r.Taken, "refused", r.Refused,
		"duration", time.Since(start).Round(time.Millisecond).String()}
	switch {
	case r.Outcome == resultNone:
		cfg.Logger.Info("no hand-off: no predecessor on this node; prefetching", attrs...)
	case r.Err != nil:
		cfg.Logger.Warn("hand-off incomplete; prefetching what it did not bring", append(attrs, "error", r.Err)...)
	default:
		cfg.Logger.Info("hand-off taken; prefetching what it did not bring", attrs...)
	}
	return r
}

func receive(ctx context.Context, cfg ReceiveConfig) Result {
	r := Result{Refused: map[string]int{}}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", cfg.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			r.Outcome, r.Err = resultNone, ErrNoPredecessor
			return r
		}
		r.Outcome, r.Err = resultFailed, fmt.Errorf("handoff: connecting: %w", err)
		return r
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	// The connection ends with ctx too (the agent told to stop), not only
	// at the deadline.
	defer context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })()
	// SECURITY: entries are taken only from a process of this agent's own
	// UID; anything else could feed pods credentials of its choosing.
	if err := checkPeer(c, uint32(os.Geteuid())); err != nil {
		r.Outcome, r.Err = resultPeerRefused, err
		return r
	}
	br := bufio.NewReaderSize(&limitedReader{r: c, n: cfg.MaxBytes}, 64<<10)
	buf, err := readFrame(br, nil, cfg.MaxEntryBytes)
	var h hello
	if err == nil {
		err = json.Unmarshal(buf, &h)
	}
	if err == nil && h.V != version {
		err = fmt.Errorf("handoff: wire version %d, want %d", h.V, version)
	}
	if err != nil {
		r.Outcome, r.Err = resultFailed, fmt.Errorf("handoff: reading the hello: %w", err)
		return r
	}
	r.Offered = h.Entries
	for read := 0; ; read++ {
		if buf, err = readFrame(br, buf, cfg.MaxEntryBytes); err != nil {
			r.Outcome, r.Err = resultPartial, fmt.Errorf("handoff: reading entry %d of %d: %w", read+1, h.Entries, err)
			return r
		}
		if len(buf) == 0 {
			r.Outcome = resultComplete
			return r
		}
		if read >= cfg.MaxEntries {
			// Not one more entry is decoded; the prefetch fetches the rest.
			r.Refused[entryOverLimit] += max(h.Entries-read, 1)
			r.Outcome, r.Err = resultPartial, fmt.Errorf("handoff: more than %d entries", cfg.MaxEntries)
			return r
		}
		var w wireEntry
		if err := json.Unmarshal(buf, &w); err != nil {
			// Not logged: the frame may hold a secret, and so may the
			// decoder's error text.
			r.Refused[entryUndecoded]++
			continue
		}
		if err := cfg.Sink.Import(w.carried()); err != nil {
			var refusal *broker.ImportRefusal
			reason := broker.ImportMalformed
			if errors.As(err, &refusal) {
				reason = refusal.Reason
			}
			r.Refused[reason]++
			continue
		}
		r.Taken++
	}
}

// limitedReader fails once more than n bytes were read, unlike
// io.LimitReader, whose EOF would read as a stream cut short.
type limitedReader struct {
	r io.Reader
	n int64
}

var errStreamTooLarge = errors.New("handoff: stream larger than the limit")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errStreamTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
