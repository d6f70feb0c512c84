package broker

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/credbroker/agent/pkg/exchange"
)

// Label values come only from the fixed sets below: never a pod name, an IP
// or anything a caller controls, so the number of series stays bounded.
const (
	// The upstream of an exchange is its cloud's name: the enabled clouds
	// are a fixed set.
	upstreamTokenRequest = "kubernetes_token"

	resultOK        = "ok"
	resultDenied    = "denied"
	resultThrottled = "throttled"
	resultError     = "error"

	evictCapacity    = "capacity"
	evictPodGone     = "pod_gone"
	evictPodDeleted  = "pod_deleted"
	evictRoleChanged = "role_changed"
	evictDenied      = "denied"
	evictExpired     = "expired"
	evictPodLimit    = "pod_limit"
)

type metrics struct {
	cacheHits       prometheus.Counter
	cacheMisses     prometheus.Counter
	cacheStale      prometheus.Counter
	evictions       *prometheus.CounterVec
	upstreamCalls   *prometheus.CounterVec
	upstreamLatency *prometheus.HistogramVec
	refreshFailures prometheus.Counter
	podFetchLimited prometheus.Counter
	cached          prometheus.GaugeFunc
}

// newMetrics registers the broker's metrics on reg; it panics if reg holds
// them already.
func newMetrics(reg prometheus.Registerer, cachedLen func() int) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		cacheHits: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_cache_hits_total",
			Help: "Requests answered from the credential cache.",
		}),
		cacheMisses: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_cache_misses_total",
			Help: "Requests that had to wait for an upstream fetch.",
		}),
		cacheStale: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_cache_stale_served_total",
			Help: "Requests answered with a still valid credential older than the freshness target because upstream was failing.",
		}),
		evictions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_cache_evictions_total",
			Help: "Cached credentials removed, by reason.",
		}, []string{"reason"}),
		upstreamCalls: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_upstream_calls_total",
			Help: "Calls to the Kubernetes API and to each cloud's credential exchange, by upstream (kubernetes_token or the cloud's name) and result.",
		}, []string{"upstream", "result"}),
		upstreamLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credbroker_upstream_duration_seconds",
			Help:    "Latency of upstream calls, by upstream and result.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 10),
		}, []string{"upstream", "result"}),
		refreshFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_refresh_failures_total",
			Help: "Background refreshes and prefetches that failed.",
		}),
		podFetchLimited: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_pod_fetch_limited_total",
			Help: "Requests refused because their pod had spent its budget of request-driven fetches.",
		}),
		cached: f.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "credbroker_cached_credentials",
			Help: "Credentials currently cached.",
		}, func() float64 { return float64(cachedLen()) }),
	}
	for _, r := range []string{evictCapacity, evictPodGone, evictPodDeleted, evictRoleChanged, evictDenied, evictExpired, evictPodLimit} {
		m.evictions.WithLabelValues(r)
	}
	return m
}

func (m *metrics) observeUpstream(upstream string, err error, d time.Duration) {
	result := upstreamResult(err)
	m.upstreamCalls.WithLabelValues(upstream, result).Inc()
	m.upstreamLatency.WithLabelValues(upstream, result).Observe(d.Seconds())
}

func upstreamResult(err error) string {
	var xe *exchange.Error
	switch {
	case err == nil:
		return resultOK
	case errors.As(err, &xe) && xe.Kind == exchange.Throttled, apierrors.IsTooManyRequests(err):
		return resultThrottled
	case errors.As(err, &xe) && !xe.Retryable(), apierrors.IsForbidden(err):
		return resultDenied
	default:
		return resultError
	}
}
