package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the webhook's Prometheus metrics; every label is from a fixed
// set.
type Metrics struct {
	admissions  *prometheus.CounterVec   // result: mutated|skipped|error
	latency     *prometheus.HistogramVec // result
	lookups     *prometheus.CounterVec   // source: cache|api|not_found|error
	certExpiry  prometheus.Gauge
	rotations   prometheus.Counter
	caPatches   *prometheus.CounterVec // result: ok|error
	caPublished prometheus.Gauge
}

// NewMetrics registers the metrics with reg (nil: none registered); it
// panics if reg holds them already.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		admissions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_webhook_admissions_total",
			Help: "Pod admissions answered, by result: mutated (variables added), skipped (nothing to add), error (allowed unmodified after a failure).",
		}, []string{"result"}),
		latency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credbroker_webhook_admission_duration_seconds",
			Help:    "Time from reading an AdmissionReview to answering it, by result.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"result"}),
		lookups: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_webhook_serviceaccount_lookups_total",
			Help: "ServiceAccount lookups, by source: cache (the watch), api (a live GET after a cache miss), not_found, error.",
		}, []string{"source"}),
		certExpiry: f.NewGauge(prometheus.GaugeOpts{
			Name: "credbroker_webhook_certificate_expiry_timestamp_seconds",
			Help: "Expiry (Unix seconds) of the serving certificate in use.",
		}),
		rotations: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_webhook_certificate_rotations_total",
			Help: "Serving certificates put in use, the first one included.",
		}),
		caPatches: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_webhook_ca_bundle_patches_total",
			Help: "Patches of the MutatingWebhookConfiguration's caBundle, by result: ok, error.",
		}, []string{"result"}),
		caPublished: f.NewGauge(prometheus.GaugeOpts{
			Name: "credbroker_webhook_ca_published",
			Help: "1 when the caBundle holds the CA of the certificate this replica serves (it is then ready).",
		}),
	}
	for _, r := range []string{resultMutated, resultSkipped, resultError} {
		m.admissions.WithLabelValues(r)
	}
	for _, s := range []string{"cache", "api", "not_found", "error"} {
		m.lookups.WithLabelValues(s)
	}
	for _, r := range []string{"ok", "error"} {
		m.caPatches.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) observe(result string, d time.Duration) {
	m.admissions.WithLabelValues(result).Inc()
	m.latency.WithLabelValues(result).Observe(d.Seconds())
}

func (m *Metrics) lookup(source string) { m.lookups.WithLabelValues(source).Inc() }
