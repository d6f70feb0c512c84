// Package surfacetest is what the surfaces' tests share: the broker's side
// of a fake broker (classifying and recording failures as pkg/broker's
// Serve does), a broker that answers from its cache, a ResponseWriter that
// costs nothing, and the surfaces' request metrics read back.
package surfacetest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/guard"
)

// Entry is embedded in a fake broker: its Serve is then one line,
// return f.Finish(f.Credentials(ctx, addr, req)). Its methods are safe for
// concurrent use.
type Entry struct {
	// Classify maps errors to failures; nil is broker.Classify.
	Classify func(error) broker.Failure

	mu     sync.Mutex
	logged []broker.Failure
	reg    *prometheus.Registry
}

// Finish turns a Credentials answer into Serve's: a failure is classified
// and recorded.
func (e *Entry) Finish(ans broker.Answer, err error) (broker.Answer, *broker.Failure) {
	if err == nil {
		return ans, nil
	}
	return ans, e.Fail(err)
}

// Fail classifies and records err.
func (e *Entry) Fail(err error) *broker.Failure {
	classify := e.Classify
	if classify == nil {
		classify = broker.Classify
	}
	f := classify(err)
	e.mu.Lock()
	e.logged = append(e.logged, f)
	e.mu.Unlock()
	return &f
}

// Logged returns the failures so far, in order.
func (e *Entry) Logged() []broker.Failure {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]broker.Failure(nil), e.logged...)
}

// Registry is where a surface under test registers its request metrics.
func (e *Entry) Registry() *prometheus.Registry {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.reg == nil {
		e.reg = prometheus.NewRegistry()
	}
	return e.reg
}

// Counted returns the answers the surface named surface counted in
// e.Registry(), by status code; codes never answered are left out.
func (e *Entry) Counted(t testing.TB, surface string) map[int]int {
	return Counted(t, e.Registry(), surface)
}

// Counted returns the answers the surface named surface counted in g, by
// status code; codes never answered are left out.
func Counted(t testing.TB, g prometheus.Gatherer, surface string) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, code := range []int{200, 301, 400, 401, 403, 404, 405, 429, 500, 503} {
		if n := testfake.Metric(t, g, "credbroker_requests_total", map[string]string{"surface": surface, "code": strconv.Itoa(code)}); n > 0 {
			out[code] = int(n)
		}
	}
	return out
}

// Hit is a broker that answers every request with Answer, as from its
// cache, and records nothing, so that the surfaces' hit benchmarks and
// allocation tests measure the surface alone.
type Hit struct{ Answer broker.Answer }

// Serve returns h.Answer.
func (h Hit) Serve(context.Context, netip.Addr, broker.Request) (broker.Answer, *broker.Failure) {
	return h.Answer, nil
}

// ServeIdentity returns h.Answer's identity.
func (h Hit) ServeIdentity(context.Context, netip.Addr, exchange.Cloud) (string, *broker.Failure) {
	return h.Answer.Identity, nil
}

// Discard is the cheapest http.ResponseWriter: it keeps the status and
// drops the body, so that the surfaces' hit benchmarks and allocation tests
// measure the surface rather than a recorder.
type Discard struct {
	Code int // the status written
	h    http.Header
}

// NewDiscard returns a Discard with an empty header map.
func NewDiscard() *Discard { return &Discard{h: http.Header{}} }

func (w *Discard) Header() http.Header         { return w.h }
func (w *Discard) WriteHeader(code int)        { w.Code = code }
func (w *Discard) Write(p []byte) (int, error) { return len(p), nil }

// Throttled has write, a surface's guard error writer, refuse a request
// with 429, code "Throttled", message "slow down" and a wait of 1.5 s, and
// returns the answer and its JSON body. A status other than 429 fails the
// test at once; a body that is not a JSON object of strings is a nil map,
// which fails the caller's checks of it.
func Throttled(t testing.TB, write guard.ErrorWriter) (*httptest.ResponseRecorder, map[string]string) {
	t.Helper()
	w := httptest.NewRecorder()
	if got := write(w, http.StatusTooManyRequests, "Throttled", "slow down", 1500*time.Millisecond); got != 429 || w.Code != 429 {
		t.Fatalf("status %d / %d", got, w.Code)
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Errorf("body %q: %v", w.Body, err)
	}
	return w, body
}
