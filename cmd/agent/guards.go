package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/api/awscreds"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/guard"
)

// guardConfig is the command line of the per-pod limits (invariant 9). A
// pod is its source addresses: every limit is per address and needs no API
// call.
type guardConfig struct {
	requireAuthorization bool
	requestQPS           float64
	requestBurst         int
	maxConnsPerAddr      int
	logBurst             int
	logInterval          time.Duration
}

func (c *guardConfig) register(fs *flag.FlagSet) {
	fs.BoolVar(&c.requireAuthorization, "require-authorization", false,
		"refuse requests without an Authorization header (401); workloads then set AWS_CONTAINER_AUTHORIZATION_TOKEN to any value, which a request forgery inside the pod cannot add")
	fs.Float64Var(&c.requestQPS, "pod-request-qps", guard.DefaultRequestQPS, "credential requests per second per source address (429 beyond)")
	fs.IntVar(&c.requestBurst, "pod-request-burst", guard.DefaultRequestBurst, "burst of credential requests per source address above --pod-request-qps")
	fs.IntVar(&c.maxConnsPerAddr, "pod-max-connections", guard.DefaultMaxConnsPerAddr, "open connections per source address; more are closed as they are accepted")
	fs.IntVar(&c.logBurst, "pod-log-burst", guard.DefaultLogBurst, "per-request log lines (refusals, failures) per source address per --pod-log-interval; the rest are counted in one line")
	fs.DurationVar(&c.logInterval, "pod-log-interval", guard.DefaultLogInterval, "window of --pod-log-burst")
}

func (c guardConfig) validate() error {
	switch {
	case c.requestQPS <= 0, c.requestBurst < 1:
		return fmt.Errorf("--pod-request-qps and --pod-request-burst must be positive (got %v, %d)", c.requestQPS, c.requestBurst)
	case c.maxConnsPerAddr < 1:
		return fmt.Errorf("--pod-max-connections must be at least 1 (got %d)", c.maxConnsPerAddr)
	case c.logBurst < 1, c.logInterval <= 0:
		return fmt.Errorf("--pod-log-burst and --pod-log-interval must be positive (got %d, %s)", c.logBurst, c.logInterval)
	}
	return nil
}

// guards is what stands between a pod and the broker: the request guard
// in front of the handler, the connection limit around the listeners, and
// the log budget around the broker's logger.
type guards struct {
	cfg     guardConfig
	metrics *guard.Metrics
	logs    *guard.LogLimiter
	conns   *guard.ConnLimiter
}

func newGuards(cfg guardConfig, reg prometheus.Registerer, logs slog.Handler) (*guards, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := guard.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	ll, err := guard.NewLogLimiter(guard.LogConfig{Inner: logs, Key: broker.LogKeyRemoteAddr,
		Burst: cfg.logBurst, Interval: cfg.logInterval, Metrics: m})
	if err != nil {
		return nil, fmt.Errorf("log limiter: %w", err)
	}
	cl, err := guard.NewConnLimiter(cfg.maxConnsPerAddr, m)
	if err != nil {
		return nil, fmt.Errorf("connection limiter: %w", err)
	}
	return &guards{cfg: cfg, metrics: m, logs: ll, conns: cl}, nil
}

// brokerLogger is the broker's logger: its per-request lines pass the
// per-address log budget.
func (g *guards) brokerLogger() *slog.Logger {
	return slog.New(g.logs).With("component", "broker")
}

// handler puts the request guard in front of next.
func (g *guards) handler(next http.Handler) (http.Handler, error) {
	h, err := guard.NewHandler(guard.HandlerConfig{Next: next, WriteError: awscreds.WriteError, Metrics: g.metrics,
		RequestQPS: g.cfg.requestQPS, RequestBurst: g.cfg.requestBurst, RequireAuthorization: g.cfg.requireAuthorization})
	if err != nil {
		return nil, fmt.Errorf("request guard: %w", err)
	}
	return h, nil
}

// listener limits ln's connections per source address; all credential
// listeners share one count per address.
func (g *guards) listener(ln net.Listener) net.Listener {
	return g.conns.Listener(ln)
}
