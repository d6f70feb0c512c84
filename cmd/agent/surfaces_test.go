package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
)

// Every spelling of the metadata tree's root reaches the GCE surface, and
// refusals made in front of it (the guard's) still carry Metadata-Flavor.
func TestGCEPathsReachTheMetadataSurface(t *testing.T) {
	b := runAWSBroker(t)
	gcp := gcpConfig{provider: "p", projectID: "proj"}
	routes, err := surfaces(tracedBroker{Broker: b}, testGuards(t, nil), surfaceClouds(gcp, azureConfig{}, podTokenConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	for path, status := range map[string]int{"/": 200, "/computeMetadata": 301, "/computeMetadata/": 200} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Metadata-Flavor", "Google")
		rec := httptest.NewRecorder()
		routes.ServeHTTP(rec, req)
		if rec.Code != status || rec.Header().Get("Metadata-Flavor") != "Google" {
			t.Errorf("%s: %d %v, want %d from the GCE surface", path, rec.Code, rec.Header(), status)
		}
	}
	// A budget of one request: after the first, the guard refuses every
	// request from this address, whichever surface it is for.
	throttled, err := surfaces(tracedBroker{Broker: b}, testGuards(t, func(c *guardConfig) { c.requestBurst, c.requestQPS = 1, 1e-9 }), surfaceClouds(gcp, azureConfig{}, podTokenConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	throttled.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	for path, want := range map[string]string{"/computeMetadata/v1/instance/": "Google", "/v1/credentials": ""} {
		rec := httptest.NewRecorder()
		throttled.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if got := rec.Header().Get("Metadata-Flavor"); rec.Code != http.StatusTooManyRequests || got != want {
			t.Errorf("%s: %d, Metadata-Flavor %q, want 429 and %q", path, rec.Code, got, want)
		}
	}
}

// testGuards are the guards of the default flags, changed by mutate.
func testGuards(t testing.TB, mutate func(*guardConfig)) *guards {
	t.Helper()
	gc := defaultGuardConfig(t)
	if mutate != nil {
		mutate(&gc)
	}
	g, err := newGuards(gc, prometheus.NewRegistry(), slog.DiscardHandler)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestEachSurfaceCountsUnderItsLabel: a request is counted under the
// surface that answered it; a path no surface owns is the AWS surface's.
func TestEachSurfaceCountsUnderItsLabel(t *testing.T) {
	b := runAWSBroker(t)
	reg := prometheus.NewRegistry()
	grd, err := newGuards(defaultGuardConfig(t), reg, slog.DiscardHandler)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := surfaces(tracedBroker{Broker: b}, grd, surfaceClouds(gcpConfig{provider: "p", projectID: "proj"},
		azureConfig{tenant: "t", identityHeader: "h"}, podTokenConfig{prefix: "https://svc.example/"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, surface, code string }{
		{"/", "gcp", "200"},
		{"/metadata/other", "azure", "404"},
		{"/v1/token", "podtoken", "400"},
		{"/v1/credentials/", "aws", "404"},
		{"/nowhere", "aws", "404"},
	} {
		labels := map[string]string{"surface": c.surface, "code": c.code}
		before := testfake.Metric(t, reg, "credbroker_requests_total", labels)
		rec := httptest.NewRecorder()
		routes.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, c.path, nil))
		if got := testfake.Metric(t, reg, "credbroker_requests_total", labels); rec.Code != mustAtoi(t, c.code) || got != before+1 {
			t.Errorf("%s: answered %d, counted %v under %v (was %v)", c.path, rec.Code, got, labels, before)
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// surfaceClouds is every cloud's flags as serveConfig.clouds lists them,
// AWS's at their defaults: which surfaces are on follows from the others.
func surfaceClouds(gcp gcpConfig, az azureConfig, podToken podTokenConfig) []cloudFlags {
	return []cloudFlags{&awsConfig{}, &gcp, &az, &podToken}
}

// runAWSBroker runs a broker with the AWS cloud over testPods until the
// test ends. Run owns the broker's refresh queue; stopping it stops the
// queue.
func runAWSBroker(t *testing.T) *broker.Broker {
	t.Helper()
	b, err := broker.New(broker.Config{ServiceAccounts: kubetest.ServiceAccounts(fake.NewClientset()), Resolver: fakeResolver(),
		Clouds: []broker.Cloud{awsexchange.Profile(awsexchange.ProfileConfig{Exchanger: fakeExchanger{}})}})
	if err != nil {
		t.Fatal(err)
	}
	kubetest.Run(t, b)
	return b
}
