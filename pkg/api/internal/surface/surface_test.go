package surface

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
)

// TestRequestsShareOneRegistration: every surface registers the same two
// metrics in one registry and counts under its own label; codes outside the
// fixed set are "other", so the series stay bounded.
func TestRequestsShareOneRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	aws, err := NewRequests(reg, "aws")
	if err != nil {
		t.Fatal(err)
	}
	gcp, err := NewRequests(reg, "gcp")
	if err != nil {
		t.Fatal(err)
	}
	aws.Observe(200, time.Millisecond)
	gcp.Observe(200, time.Millisecond)
	gcp.Observe(200, time.Millisecond)
	gcp.Observe(418, time.Millisecond)
	for _, c := range []struct {
		surface, code string
		want          float64
	}{{"aws", "200", 1}, {"gcp", "200", 2}, {"gcp", "other", 1}, {"aws", "other", 0}} {
		if got := testfake.Metric(t, reg, requestsName, map[string]string{LabelSurface: c.surface, "code": c.code}); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.surface, c.code, got, c.want)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"aws": true, "gcp": true, "other": true}
	for _, c := range statusCodes {
		allowed[strconv.Itoa(c)] = true
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !allowed[lp.GetValue()] {
					t.Errorf("%s has %s=%q outside the fixed set", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// TestHandlerCountsAndTimes: the instrumented handler counts the status
// serve returns and times it with the injected clock.
// Every fixed code is counted under its own label, each a different
// number of times, so that a code counted under another's label shows.
func TestRequestsCountEachCode(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewRequests(reg, "aws")
	if err != nil {
		t.Fatal(err)
	}
	for i, code := range statusCodes {
		for range i + 1 {
			m.Observe(code, time.Millisecond)
		}
	}
	m.Observe(0, time.Millisecond)
	m.Observe(999, time.Millisecond)
	for i, code := range statusCodes {
		if got := testfake.Metric(t, reg, requestsName, map[string]string{LabelSurface: "aws", "code": strconv.Itoa(code)}); got != float64(i+1) {
			t.Errorf("code %d counted %v times, want %d", code, got, i+1)
		}
	}
	if got := testfake.Metric(t, reg, requestsName, map[string]string{LabelSurface: "aws", "code": "other"}); got != 2 {
		t.Errorf("other codes counted %v times, want 2", got)
	}
}

func TestHandlerCountsAndTimes(t *testing.T) {
	reg := prometheus.NewRegistry()
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	h, err := NewHandler(reg, "azure", func(w http.ResponseWriter, _ *http.Request) int {
		clk.Step(3 * time.Second)
		w.WriteHeader(http.StatusTeapot)
		return http.StatusNotFound
	}, clk)
	if err != nil {
		t.Fatal(err)
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	if got := testfake.Metric(t, reg, requestsName, map[string]string{LabelSurface: "azure", "code": "404"}); got != 1 {
		t.Errorf("404s counted %v, want 1", got)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == durationName {
			if s := mf.GetMetric()[0].GetHistogram().GetSampleSum(); s != 3 {
				t.Errorf("duration %v s, want 3", s)
			}
		}
	}
}

// TestStatusesWrite: the table's status, and Retry-After and the code as
// each kind of table writes them.
func TestStatusesWrite(t *testing.T) {
	plain := Statuses{Refused: 403, Throttled: 429, Invalid: 400, Unavailable: 503}
	metadata := plain
	metadata.RetryableOnly = true
	type out struct {
		status int
		code   string
		after  time.Duration
	}
	for _, c := range []struct {
		s    Statuses
		f    broker.Failure
		want out
	}{
		{plain, broker.Failure{Class: broker.Refused, Code: "R", RetryAfter: time.Second}, out{403, "R", time.Second}},
		{plain, broker.Failure{Class: broker.Unavailable}, out{503, "", 0}},
		{plain, broker.Failure{Class: 99, Code: "X"}, out{503, "X", 0}},
		{metadata, broker.Failure{Class: broker.Refused, Code: "R", RetryAfter: time.Second}, out{403, "R", 0}},
		{metadata, broker.Failure{Class: broker.Unavailable}, out{503, "Service Unavailable", time.Second}},
		{metadata, broker.Failure{Class: broker.Unavailable, Code: "U", RetryAfter: 2500 * time.Millisecond}, out{503, "U", 2500 * time.Millisecond}},
		{metadata, broker.Failure{Class: broker.Throttled, Code: "T"}, out{429, "T", 0}},
		{metadata, broker.Failure{Class: broker.Invalid, Code: "I"}, out{400, "I", 0}},
	} {
		var got out
		c.s.Write(httptest.NewRecorder(), &c.f, func(_ http.ResponseWriter, status int, code, _ string, after time.Duration) int {
			got = out{status, code, after}
			return status
		})
		if got != c.want {
			t.Errorf("%+v, %+v: wrote %+v, want %+v", c.s, c.f, got, c.want)
		}
	}
}

func BenchmarkRequestsObserve(b *testing.B) {
	m, err := NewRequests(prometheus.NewRegistry(), "aws")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m.Observe(http.StatusOK, time.Millisecond)
	}
}
