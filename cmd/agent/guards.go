package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/api"
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
		"refuse AWS credential requests without an Authorization header (401); workloads then set AWS_CONTAINER_AUTHORIZATION_TOKEN to any value, which a request forgery inside the pod cannot add. The GCE and Azure surfaces keep their own headers (Metadata-Flavor, X-IDENTITY-HEADER) and /v1/token needs none")
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

// guards is what stands between a pod and the broker: a request guard in
// front of each surface (one request budget per address, shared), the
// connection limit around the listeners, and the log budget around the
// broker's logger.
type guards struct {
	cfg      guardConfig
	reg      prometheus.Registerer // the surfaces' request metrics
	metrics  *guard.Metrics
	logs     *guard.LogLimiter
	conns    *guard.ConnLimiter
	requests *guard.Limiter
}

func newGuards(cfg guardConfig, reg prometheus.Registerer, logs slog.Handler) (*guards, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := guard.NewMetrics(reg)
	ll, err := guard.NewLogLimiter(guard.LogConfig{Inner: logs, Key: broker.LogKeyRemoteAddr,
		Burst: cfg.logBurst, Interval: cfg.logInterval, Metrics: m})
	if err != nil {
		return nil, fmt.Errorf("log limiter: %w", err)
	}
	cl, err := guard.NewConnLimiter(cfg.maxConnsPerAddr, m)
	if err != nil {
		return nil, fmt.Errorf("connection limiter: %w", err)
	}
	rl, err := guard.NewLimiter(guard.LimiterConfig{RequestQPS: cfg.requestQPS, RequestBurst: cfg.requestBurst})
	if err != nil {
		return nil, fmt.Errorf("request limiter: %w", err)
	}
	return &guards{cfg: cfg, reg: reg, metrics: m, logs: ll, conns: cl, requests: rl}, nil
}

// brokerLogger is the broker's logger: its per-request lines pass the
// per-address log budget.
func (g *guards) brokerLogger() *slog.Logger {
	return slog.New(g.logs).With("component", "broker")
}

// awsRules are the AWS surface's guard rules: the only surface whose
// clients can send Authorization, so the only one --require-authorization
// applies to. Every other surface takes its package's GuardRules as they
// are.
func (g *guards) awsRules() guard.Rules {
	return awscreds.GuardRules(g.cfg.requireAuthorization)
}

// surface puts a request guard with the surface's rules in front of next;
// every surface's guard draws on the same per-address request budget.
func (g *guards) surface(rules guard.Rules, next http.Handler) (http.Handler, error) {
	h, err := guard.NewHandler(guard.HandlerConfig{Next: next, Rules: rules, Metrics: g.metrics, Limiter: g.requests})
	if err != nil {
		return nil, fmt.Errorf("request guard: %w", err)
	}
	return h, nil
}

// route is the route of the surface owning paths owns, with a guard under
// its rules in front of next.
func (g *guards) route(owns func(string) bool, rules guard.Rules, next http.Handler) (api.Route, error) {
	h, err := g.surface(rules, next)
	if err != nil {
		return api.Route{}, err
	}
	return api.Route{Owns: owns, Handler: h}, nil
}

// listener limits ln's connections per source address; all credential
// listeners share one count per address.
func (g *guards) listener(ln net.Listener) net.Listener {
	return g.conns.Listener(ln)
}
