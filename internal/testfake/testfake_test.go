package testfake

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/podresolve"
)

func TestResolver(t *testing.T) {
	ctx := context.Background()
	var r Resolver
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	if _, err := r.Resolve(ctx, a); !errors.Is(err, podresolve.ErrNotFound) {
		t.Errorf("zero Resolver: %v, want ErrNotFound", err)
	}
	r.Set("10.0.0.1", podresolve.Pod{Name: "a"})
	if p, err := r.Resolve(ctx, a); err != nil || p.Name != "a" {
		t.Errorf("after Set: %+v, %v", p, err)
	}
	if _, err := r.Resolve(ctx, b); !errors.Is(err, podresolve.ErrNotFound) {
		t.Errorf("another address: %v, want ErrNotFound", err)
	}
	boom := errors.New("boom")
	r.Fail("10.0.0.1", boom)
	if _, err := r.Resolve(ctx, a); !errors.Is(err, boom) {
		t.Errorf("after Fail: %v, want the error", err)
	}
	if p, _ := (OnePod{Pod: podresolve.Pod{Name: "one"}}).Resolve(ctx, b); p.Name != "one" {
		t.Errorf("OnePod answered %+v", p)
	}
}

func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total"}, []string{"result"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "y"})
	reg.MustRegister(c, g)
	c.WithLabelValues("ok").Add(3)
	c.WithLabelValues("denied").Add(1)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"x_total", map[string]string{"result": "denied"}, 1},
		{"x_total", map[string]string{"result": "ok"}, 3},
		{"x_total", map[string]string{"result": "error"}, 0},
		{"y", nil, 7},
		{"z", nil, 0},
	} {
		if got := Metric(t, reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s %v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

// stopRecorder records how a helper first stopped the test, and returns
// instead of stopping it.
type stopRecorder struct {
	testing.TB
	how, msg string
}

func (r *stopRecorder) Helper()                           {}
func (r *stopRecorder) Skipf(format string, args ...any)  { r.stop("skip", format, args) }
func (r *stopRecorder) Fatalf(format string, args ...any) { r.stop("fatal", format, args) }
func (r *stopRecorder) stop(how, format string, args []any) {
	if r.how == "" {
		r.how, r.msg = how, fmt.Sprintf(format, args...)
	}
}

// TestUnavailable: a missing prerequisite is a skip, except under CI.
func TestUnavailable(t *testing.T) {
	for ci, want := range map[string]string{"": "skip", "false": "skip", "true": "fatal"} {
		t.Setenv("CI", ci)
		r := &stopRecorder{TB: t}
		Unavailable(r, "tool %s", "x")
		if r.how != want || !strings.Contains(r.msg, "prerequisite missing") || !strings.Contains(r.msg, "tool x") {
			t.Errorf("CI=%q: %s %q, want %s naming the prerequisite", ci, r.how, r.msg, want)
		}
	}
}
