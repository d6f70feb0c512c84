package attest

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credbroker/agent/pkg/podresolve"
)

// TestServedTracesEachGrantOncePerConnection: a credential served from
// cache on a keep-alive connection leaves one line per grant, naming the
// pod, the identity and the connection's port (to join the attestation
// line), and another connection logs its own.
func TestServedTracesEachGrantOncePerConnection(t *testing.T) {
	var logs bytes.Buffer
	inf := &fakeInformer{}
	a, err := New(Config{Resolver: inf, Pods: inf, Registerer: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	conn := func() net.Conn {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	pod := podresolve.Pod{Namespace: "team-a", Name: "app-1", UID: "uid-a"}
	role := "arn:aws:iam::111122223333:role/app"
	first := WithConn(context.Background(), conn())
	for range 3 {
		a.Served(first, pod, "aws", role, "")
	}
	a.Served(first, pod, "gcp", "", "https://www.googleapis.com/auth/cloud-platform")
	a.Served(WithConn(context.Background(), conn()), pod, "aws", role, "")
	a.Served(context.Background(), pod, "aws", role, "") // no connection: nothing to join

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (two grants on the first connection, one on the second):\n%s", len(lines), logs.String())
	}
	for _, want := range []string{`"uid":"uid-a"`, `"pod":"app-1"`, `"identity":"` + role + `"`, `"client_port":`, `"remote_addr":"127.0.0.1"`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("first line lacks %s: %s", want, lines[0])
		}
	}
	if n := testutil.ToFloat64(a.m.served); n != 3 {
		t.Errorf("credbroker_attest_grants_logged_total = %v, want 3", n)
	}
}
