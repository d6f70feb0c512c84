package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/attest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/podresolve"
)

func TestAttestFlags(t *testing.T) {
	c := mustParse(t, minimalFlags...)
	if c.attest.mode != attestNetns || c.attest.procRoot != "/proc" {
		t.Errorf("defaults: --attest=%s --proc-root=%s, want netns and /proc", c.attest.mode, c.attest.procRoot)
	}
	if _, err := parseServeFlags(append(minimalFlags, "--attest=pod"), io.Discard); err == nil || !strings.Contains(err.Error(), "--attest") {
		t.Errorf("--attest=pod: %v, want an error naming the flag", err)
	}
	c, err := parseServeFlags(append(minimalFlags, "--attest=container"), io.Discard)
	if err != nil || c.attest.mode != attestContainer {
		t.Errorf("--attest=container: %v, %v", c.attest.mode, err)
	}
	c, err = parseServeFlags(append(minimalFlags, "--attest=off"), io.Discard)
	if err != nil || c.attest.mode != attestOff {
		t.Errorf("--attest=off: %v, %v", c.attest.mode, err)
	}
}

// TestAttestErrorsRetryable: the pod gets a retryable 503-class answer for
// both attestation failures, never a final refusal.
func TestAttestErrorsRetryable(t *testing.T) {
	for _, err := range []error{attest.ErrRefused, attest.ErrUnavailable} {
		f := broker.Classify(errors.Join(errors.New("identifying caller"), err))
		if f.Class != broker.Unavailable || f.RetryAfter <= 0 {
			t.Errorf("Classify(%v) = %+v, want Unavailable with Retry-After", err, f)
		}
	}
}

// TestAttestProbe: /readyz says why when attestation cannot work, and
// passes through otherwise.
func TestAttestProbe(t *testing.T) {
	var off *attestation
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	if off.probe(ok) == nil || off.connContext() != nil {
		t.Fatal("--attest=off must leave the probe and the connections alone")
	}
	a := &attestation{mode: attestNetns}
	var err error
	inf := emptyPods{}
	a.a, err = attest.New(attest.Config{Resolver: inf, Pods: inf, ProcRoot: t.TempDir(), Registerer: newRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	h := a.probe(ok)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("before the check: %d, want 200 (the probe's own answer)", rec.Code)
	}
	a.check(context.Background()) // an empty proc root: no self/status
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "--attest=netns cannot work") {
		t.Errorf("after a failed check: %d %q, want 503 with the reason", rec.Code, rec.Body.String())
	}
}

type emptyPods struct{}

func (emptyPods) Resolve(context.Context, netip.Addr) (podresolve.Pod, error) {
	return podresolve.Pod{}, podresolve.ErrNotFound
}
func (emptyPods) PodByUID(types.UID) (podresolve.Pod, bool) { return podresolve.Pod{}, false }
func (emptyPods) LivePods() []podresolve.Pod                { return nil }

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }
