package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/handoff"
)

// handoffConfig is the command line of the rollout hand-off (package
// handoff): the socket a starting agent takes its predecessor's cache from,
// and then serves its own on.
type handoffConfig struct {
	socket  string
	timeout time.Duration
}

func (c *handoffConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.socket, "handoff-socket", "",
		"UNIX socket in a node-local directory only the agent's UID may enter: at start the agent takes its predecessor's cached credentials from it (re-checking each against its own informer and policy) and fetches only the rest; once serving, it answers its successor there, only to a peer of its own UID (SO_PEERCRED). Empty: no hand-off (every start prefetches)")
	fs.DurationVar(&c.timeout, "handoff-timeout", 5*time.Second, "bound on taking a hand-off at start (and on serving one); past it the agent prefetches what it did not get")
}

func (c handoffConfig) validate() error {
	if c.socket != "" && !filepath.IsAbs(c.socket) {
		return fmt.Errorf("--handoff-socket %q must be an absolute path", c.socket)
	}
	if c.timeout <= 0 {
		return errors.New("--handoff-timeout must be positive")
	}
	return nil
}

func (c handoffConfig) enabled() bool { return c.socket != "" }

// handoffs holds what serve needs of the hand-off on both sides.
type handoffs struct {
	cfg     handoffConfig
	metrics *handoff.Metrics
	log     *slog.Logger
}

func newHandoffs(cfg handoffConfig, reg prometheus.Registerer, log *slog.Logger) (*handoffs, error) {
	if !cfg.enabled() {
		return &handoffs{cfg: cfg}, nil
	}
	return &handoffs{cfg: cfg, metrics: handoff.NewMetrics(reg), log: log.With("component", "handoff")}, nil
}

// take receives the predecessor's cache into brk, then lets brk's workers
// prefetch what is still missing: whatever happens, fetches are released.
func (h *handoffs) take(ctx context.Context, brk *broker.Broker) {
	defer brk.ReleaseFetches()
	if !h.cfg.enabled() {
		return
	}
	handoff.Receive(ctx, handoff.ReceiveConfig{Path: h.cfg.socket, Sink: brk, Metrics: h.metrics, Logger: h.log, Timeout: h.cfg.timeout})
}

// listen puts this agent's socket at the path, for its successor. Not
// fatal: without it the next rollout prefetches on this node, as before.
func (h *handoffs) listen(brk *broker.Broker) *handoff.Listener {
	if !h.cfg.enabled() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(h.cfg.socket), 0o700); err != nil {
		h.log.Warn("no hand-off socket; the next rollout on this node prefetches", "error", err)
		return nil
	}
	ln, err := handoff.Listen(handoff.ServerConfig{Path: h.cfg.socket, Source: brk, Metrics: h.metrics, Logger: h.log, Timeout: h.cfg.timeout})
	if err != nil {
		h.log.Warn("no hand-off socket; the next rollout on this node prefetches", "error", err)
		return nil
	}
	return ln
}
