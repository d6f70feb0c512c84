package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || strings.TrimSpace(out.String()) != version {
		t.Fatalf("version: exit %d, %q", code, out.String())
	}
	if code := run(nil, &out, &errOut); code != 2 {
		t.Fatalf("no command: exit %d", code)
	}
	if code := run([]string{"frobnicate"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unknown command") {
		t.Fatalf("unknown command: exit %d, %q", code, errOut.String())
	}
}

// minimalFlags are the fewest flags serve starts with: a node and an STS.
var minimalFlags = []string{"--node-name=n", "--sts-endpoint=http://127.0.0.1:1"}

// mustParse is parseServeFlags of args, or the test fails.
func mustParse(t testing.TB, args ...string) serveConfig {
	t.Helper()
	c, err := parseServeFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestServeFlags(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	t.Setenv("AWS_REGION", "eu-west-1")
	c := mustParse(t)
	if c.nodeName != "node-a" || c.stsRegion != "eu-west-1" || strings.Join(c.listen, ",") != defaultListen ||
		c.probeListen != "127.0.0.1:2703" || c.metricsListen != ":2705" || c.sessionDuration != time.Hour ||
		c.broker.TokenExpiration != 10*time.Minute || c.audience != "sts.amazonaws.com" ||
		c.roleAnnotation != "eks.amazonaws.com/role-arn" || c.broker.CacheSize != 4096 || c.broker.AllowDefaultServiceAccount {
		t.Fatalf("defaults: %+v", c)
	}
	c = mustParse(t, "--allowed-role-arn", "arn:a:*", "--allowed-role-arn=arn:b:*,arn:c:*", "--listen", "127.0.0.1:1")
	if got := strings.Join(c.allowedRoles, " "); got != "arn:a:* arn:b:* arn:c:*" {
		t.Fatalf("allowed roles %q", got)
	}
	if strings.Join(c.listen, ",") != "127.0.0.1:1" {
		t.Fatalf("listen %v", c.listen)
	}

	t.Setenv("NODE_NAME", "")
	if _, err := parseServeFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "--node-name") {
		t.Fatalf("missing node name: %v", err)
	}
	t.Setenv("NODE_NAME", "n")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	if _, err := parseServeFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "--sts-region") {
		t.Fatalf("missing region: %v", err)
	}
}

func TestListenAllSkipsAddressesTheNodeLacks(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	// 192.0.2.1 (TEST-NET-1) is on no interface of this machine.
	lns, err := listenAll(context.Background(), []string{"192.0.2.1:0", "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer lns[0].Close()
	if len(lns) != 1 || !strings.HasPrefix(lns[0].Addr().String(), "127.0.0.1:") {
		t.Fatalf("listeners %v", lns)
	}
	if _, err := listenAll(context.Background(), []string{"192.0.2.1:0"}, log); err == nil {
		t.Fatal("no listener could be bound, yet no error")
	}
}

func TestProbes(t *testing.T) {
	ready := false
	h := probeHandler(func() bool { return ready })
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if get("/healthz") != 200 || get("/readyz") != 503 {
		t.Fatal("before ready: want healthz 200, readyz 503")
	}
	ready = true
	if get("/readyz") != 200 {
		t.Fatal("ready: readyz not 200")
	}
}

// TestMetricsAreNotCompressed: a scraper that accepts gzip (Prometheus
// does) gets the metrics as plain text, so that no scrape allocates a gzip
// writer's megabyte of compressor state in the agent.
func TestMetricsAreNotCompressed(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	metricsHandler(reg).ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Header().Get("Content-Encoding") != "" || !strings.Contains(rec.Body.String(), "go_goroutines ") {
		t.Fatalf("status %d, Content-Encoding %q, body starts %.40q; want 200, plain text", rec.Code, rec.Header().Get("Content-Encoding"), rec.Body.String())
	}
}

// The credential server bounds what a caller controls: an oversized header
// is refused before the handler runs.
func TestCredentialServerRefusesHugeHeaders(t *testing.T) {
	handled := false
	srv := newCredentialServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { handled = true }), slog.New(slog.DiscardHandler))
	if srv.ReadHeaderTimeout == 0 || srv.ReadTimeout == 0 || srv.WriteTimeout == 0 || srv.IdleTimeout == 0 {
		t.Fatalf("a server timeout is unset: %+v", srv)
	}
	ts := httptest.NewUnstartedServer(srv.Handler)
	ts.Config = srv
	ts.Start()
	defer ts.Close()
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/v1/credentials", nil)
	req.Header.Set("X-Padding", strings.Repeat("a", 64<<10))
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || handled {
		t.Fatalf("status %d, handled %t; want 431 before the handler", resp.StatusCode, handled)
	}
}
