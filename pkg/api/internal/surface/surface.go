// Package surface is the scaffolding every wire surface (pkg/api/*) shares:
// the broker as the surfaces see it, the caller's address, the
// request metrics with their surface label, and writing a broker failure
// through a surface's own class → status table.
package surface

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/broker"
)

// Broker is what a surface needs of the broker: one entry, which answers a
// request or returns its failure, classified and already logged.
type Broker interface {
	Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure)
}

// Addr is the caller's address, IPv4-mapped forms unmapped. It comes from
// r.RemoteAddr only, the TCP peer: never from a header.
func Addr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// ErrorWriter writes an error in a surface's format and returns status; a
// guard.ErrorWriter has the same shape.
type ErrorWriter func(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) int

// Statuses is a surface's class → status table.
type Statuses struct {
	Refused, Throttled, Invalid int
	// Unavailable is also the status of a class the table does not know:
	// retryable.
	Unavailable int
	// RetryableOnly: Retry-After only on the retryable answers (always on
	// Unavailable, at least a second; on Throttled when the broker named a
	// wait), and a failure without a code is named by its status text.
	// Otherwise Retry-After whenever the broker named a wait, and the code
	// is the broker's as it is.
	RetryableOnly bool
}

// Status is the status of class c.
func (s *Statuses) Status(c broker.Class) int {
	switch c {
	case broker.Refused:
		return s.Refused
	case broker.Throttled:
		return s.Throttled
	case broker.Invalid:
		return s.Invalid
	default:
		return s.Unavailable
	}
}

// Write answers f with its class's status through write.
func (s *Statuses) Write(w http.ResponseWriter, f *broker.Failure, write ErrorWriter) int {
	status := s.Status(f.Class)
	code, after := f.Code, f.RetryAfter
	if s.RetryableOnly {
		if code == "" {
			code = http.StatusText(status)
		}
		switch {
		case status == s.Unavailable:
			after = max(after, time.Second)
		case status != s.Throttled:
			after = 0
		}
	}
	return write(w, status, code, f.Message, after)
}

// Metric names and their label values: fixed sets, never anything a
// caller controls.
const (
	requestsName = "credbroker_requests_total"
	durationName = "credbroker_request_duration_seconds"
	// LabelSurface names the surface that answered.
	LabelSurface = "surface"
)

// statusCodes are the only codes the surfaces answer with; anything else is
// counted as "other".
var statusCodes = []int{
	http.StatusOK, http.StatusMovedPermanently, http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound,
	http.StatusMethodNotAllowed, http.StatusTooManyRequests, http.StatusInternalServerError,
	http.StatusServiceUnavailable,
}

// Requests counts and times one surface's answers.
type Requests struct {
	byCode   []prometheus.Counter // by index in statusCodes
	other    prometheus.Counter
	duration prometheus.Observer
}

// NewRequests returns the request metrics of the surface named name,
// registered with reg (nil: not registered). Every surface registers the
// same two metrics; the second and later share the first's.
func NewRequests(reg prometheus.Registerer, name string) (*Requests, error) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: requestsName,
		Help: "Credential API requests by surface and HTTP status code.",
	}, []string{LabelSurface, "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    durationName,
		Help:    "Time to answer a credential API request, by surface.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{LabelSurface})
	if reg != nil {
		var err error
		if requests, err = register(reg, requests); err != nil {
			return nil, err
		}
		if duration, err = register(reg, duration); err != nil {
			return nil, err
		}
	}
	// Resolve the per-code counters once: the hot path then increments a
	// counter without hashing label values or allocating.
	m := &Requests{byCode: make([]prometheus.Counter, len(statusCodes)),
		other: requests.WithLabelValues(name, "other"), duration: duration.WithLabelValues(name)}
	for i, code := range statusCodes {
		m.byCode[i] = requests.WithLabelValues(name, strconv.Itoa(code))
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	switch {
	case err == nil:
		return c, nil
	case errors.As(err, &are):
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// Observe counts an answer by status and times it.
func (m *Requests) Observe(code int, d time.Duration) {
	// A scan, not a map: 200 comes first, and hashing an int costs more
	// than ten comparisons.
	c := m.other
	for i, sc := range statusCodes {
		if sc == code {
			c = m.byCode[i]
			break
		}
	}
	c.Inc()
	m.duration.Observe(d.Seconds())
}

// Handler is a surface's http.Handler: Serve answers and returns the
// status, which Handler counts and times.
type Handler struct {
	serve    func(http.ResponseWriter, *http.Request) int
	clock    clock.PassiveClock
	requests *Requests
}

// NewHandler instruments serve with the request metrics of the surface
// named name, registered with reg (nil: not registered); clk nil is the
// real clock.
func NewHandler(reg prometheus.Registerer, name string, serve func(http.ResponseWriter, *http.Request) int, clk clock.PassiveClock) (Handler, error) {
	m, err := NewRequests(reg, name)
	if err != nil {
		return Handler{}, fmt.Errorf("registering the %s surface's request metrics: %w", name, err)
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return Handler{serve: serve, clock: clk, requests: m}, nil
}

// ServeHTTP answers r and counts the answer.
func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.clock.Now()
	code := h.serve(w, r)
	h.requests.Observe(code, h.clock.Since(start))
}
