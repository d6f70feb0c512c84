package handoff

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/credbroker/agent/pkg/broker"
)

// Label values: fixed sets, never a pod, a UID or anything a peer sent.
const (
	resultComplete    = "complete"     // every entry read, end frame seen
	resultPartial     = "partial"      // cut short, malformed or over a bound after the hello
	resultFailed      = "failed"       // nothing read: connection error, bad hello, deadline
	resultNone        = "none"         // no predecessor listening
	resultPeerRefused = "peer_refused" // the other end runs under another UID

	entryTaken     = "taken"
	entryUndecoded = "undecodable" // not JSON of an entry
	entryOverLimit = "over_limit"  // beyond the entry cap
)

// Metrics counts hand-offs on both sides.
type Metrics struct {
	received *prometheus.CounterVec // by result
	entries  *prometheus.CounterVec // by result: taken or why not
	sent     *prometheus.CounterVec // by result
	sentN    prometheus.Counter
}

// NewMetrics registers the hand-off metrics on reg; it panics if reg holds
// them already.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		received: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_handoff_received_total",
			Help: "Hand-offs this agent took from its predecessor at start, by result (complete, partial, failed, none, peer_refused).",
		}, []string{"result"}),
		entries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_handoff_entries_total",
			Help: "Entries received in a hand-off, by result: taken, or the reason they were refused.",
		}, []string{"result"}),
		sent: f.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_handoff_sent_total",
			Help: "Hand-offs this agent served to a successor, by result (complete, failed, peer_refused).",
		}, []string{"result"}),
		sentN: f.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_handoff_sent_entries_total",
			Help: "Entries this agent wrote to successors.",
		}),
	}
	for _, r := range []string{resultComplete, resultPartial, resultFailed, resultNone, resultPeerRefused} {
		m.received.WithLabelValues(r)
	}
	for _, r := range append([]string{entryTaken, entryUndecoded, entryOverLimit}, broker.ImportReasons...) {
		m.entries.WithLabelValues(r)
	}
	for _, r := range []string{resultComplete, resultFailed, resultPeerRefused} {
		m.sent.WithLabelValues(r)
	}
	return m
}
