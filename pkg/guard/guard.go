// Package guard keeps one pod from hurting the others (invariant 9). It
// sits in front of a credential API and knows nothing of pods, credentials
// or wire formats: everything is keyed by the connection's source address,
// which on a node is a pod (a pod is its IPs), so no limit needs an API call
// and every refusal happens before the broker does any work.
//
//   - Handler stands in front of one wire surface and refuses forwarded
//     requests (X-Forwarded-For, Forwarded, Via and kin), requests without
//     an Authorization header where the surface's Rules ask for one, and
//     requests past the source address's rate (429 + Retry-After). Every
//     refusal is written by the surface's own error writer (Rules).
//   - Limiter is the per-address token bucket; the Handlers of all surfaces
//     share one, so that a pod has one budget across surfaces.
//   - Listener limits open connections per source address; excess
//     connections are closed as they are accepted.
//   - LogLimiter is a slog.Handler that caps per-request log lines per
//     source address and reports how many it dropped.
//
// Every table is bounded (an LRU, or entries that exist only while a
// connection does), so many source addresses cannot grow memory, and every
// metric label comes from a fixed set: never an address or a pod name.
//
// SECURITY: none of this identifies anyone. The caller's identity is the
// broker's business and comes from the connection's source address only; the
// guard only refuses.
package guard

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"k8s.io/utils/clock"
)

// ErrorWriter writes an error answer in the wire format of the API being
// guarded (awscreds.WriteError, gcemetadata.WriteError and so on: each
// surface's GuardRules name its own). The guard passes only its own
// constant texts as code and message.
type ErrorWriter func(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) int

// Error codes the guard answers with. They are part of the API: callers and
// dashboards match on them.
const (
	CodeForwarded     = "ForwardedRequest"
	CodeUnauthorized  = "MissingAuthorization"
	CodeRateLimited   = "Throttled"
	reasonForwarded   = "forwarded"
	reasonUnauthz     = "unauthorized"
	reasonRateLimited = "rate_limited"
)

// Defaults, chosen so that no well-behaved workload comes near them: every
// SDK caches credentials per process and asks again only minutes before
// they expire, so a pod's steady rate is a few requests per hour.
const (
	// DefaultRequestQPS is the sustained request rate per source address.
	DefaultRequestQPS = 20
	// DefaultRequestBurst covers a pod whose processes all start at once
	// (a pre-forking server with dozens of workers, each with its own SDK
	// client). It is generous because the Java and Rust SDKs do not retry a
	// 429 (notes/sdk-contract.md).
	DefaultRequestBurst = 100
	// DefaultMaxConnsPerAddr: SDK clients keep one or two keep-alive
	// connections per process.
	DefaultMaxConnsPerAddr = 64
	// DefaultLogBurst and DefaultLogInterval: per source address, this many
	// per-request log lines per interval, then one line with the count of
	// those dropped.
	DefaultLogBurst    = 5
	DefaultLogInterval = time.Minute
	// DefaultMaxAddrs bounds each per-address table. A node has at most a
	// few hundred pods with at most two addresses each; past this the least
	// recently seen address is forgotten (for the rate limiter: its bucket
	// starts full again).
	DefaultMaxAddrs = 4096
)

// Metrics are the guard's counters. Create them once with NewMetrics and
// share them between the Handler, the Listeners and the LogLimiter.
type Metrics struct {
	refusedRequests    *prometheus.CounterVec
	forwarded          prometheus.Counter
	unauthorized       prometheus.Counter
	rateLimited        prometheus.Counter
	refusedConnections prometheus.Counter
	openConnections    prometheus.Gauge
	logSuppressed      prometheus.Counter
}

// NewMetrics registers the guard's metrics on reg; it panics if reg holds
// them already.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		refusedRequests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_guard_refused_requests_total",
			Help: "Requests refused before the broker, by reason (forwarded, unauthorized, rate_limited).",
		}, []string{"reason"}),
		refusedConnections: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_guard_refused_connections_total",
			Help: "Connections closed at accept because their source address had too many open.",
		}),
		openConnections: f.NewGauge(prometheus.GaugeOpts{
			Name: "credbroker_guard_open_connections",
			Help: "Credential API connections currently open.",
		}),
		logSuppressed: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_log_lines_suppressed_total",
			Help: "Per-request log lines dropped because their source address exceeded its log budget.",
		}),
	}
	// Resolved once: the request path then increments without hashing
	// label values, and every series exists from the start.
	m.forwarded = m.refusedRequests.WithLabelValues(reasonForwarded)
	m.unauthorized = m.refusedRequests.WithLabelValues(reasonUnauthz)
	m.rateLimited = m.refusedRequests.WithLabelValues(reasonRateLimited)
	return m
}

var errNoMetrics = errors.New("guard: Metrics is required (NewMetrics)")

func realClock(c clock.PassiveClock) clock.PassiveClock {
	if c == nil {
		return clock.RealClock{}
	}
	return c
}
