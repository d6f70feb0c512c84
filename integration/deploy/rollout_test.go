//go:build integration

package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/testenv"
)

const migrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// client is one request loop from inside the pod.
type client struct {
	name      string
	keepAlive bool
	retry     bool // once, after a connection error or a 5xx, as the SDKs do

	ok       atomic.Int64
	attempts atomic.Int64

	mu         sync.Mutex
	firstFails map[string]int // failures of a first attempt, by class
	finalFails map[string]int // requests that failed after any retry
}

func (c *client) fail(m map[string]int, class string) {
	c.mu.Lock()
	m[class]++
	c.mu.Unlock()
}

func (c *client) counts() (first, final int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.firstFails {
		first += n
	}
	for _, n := range c.finalFails {
		final += n
	}
	return first, final
}

func (c *client) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("%-40s %6d ok, %d attempts; first-attempt failures %s; failed requests %s",
		c.name, c.ok.Load(), c.attempts.Load(), classes(c.firstFails), classes(c.finalFails))
}

func classes(m map[string]int) string {
	if len(m) == 0 {
		return "0"
	}
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// classify names a failure for the report.
func classify(status int, err error) string {
	switch {
	case err == nil:
		return fmt.Sprintf("status-%d", status)
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return "other(" + err.Error() + ")"
	}
}

// run loops requests until stop is closed or max attempts were made.
func (c *client) run(ctx context.Context, p *harness.Pod, url string, stop <-chan struct{}, max int64) {
	tr := &http.Transport{DialContext: p.NS.DialContext, DisableKeepAlives: !c.keepAlive, MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	once := func() (int, error) {
		c.attempts.Add(1)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return resp.StatusCode, err
		}
		return resp.StatusCode, nil
	}
	for c.attempts.Load() < max {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		status, err := once()
		if err == nil && status == http.StatusOK {
			c.ok.Add(1)
			continue
		}
		c.fail(c.firstFails, classify(status, err))
		if !c.retry || (err == nil && status < 500) {
			c.fail(c.finalFails, classify(status, err))
			continue
		}
		status, err = once()
		if err == nil && status == http.StatusOK {
			c.ok.Add(1)
			continue
		}
		c.fail(c.finalFails, classify(status, err))
	}
}

// waitFor polls cond until it holds, bounded by ctx.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func served(ctx context.Context, a *harness.Agent) float64 {
	text, err := a.Metrics(ctx)
	if err != nil {
		return 0
	}
	return harness.MetricSum(text, "credbroker_requests_total", map[string]string{"code": "200"})
}

// TestRolloutZeroDowntime replaces agent A by agent B the way a surge
// rollout does on one node: B starts on the same address (SO_REUSEPORT), both
// serve, then A gets SIGTERM and drains. Clients in a pod loop requests the
// whole time. The SDK-like client (keep-alive, one retry after a connection
// error or a 5xx) must see no failed request; what clients without a retry
// see is logged, with tcp_migrate_req off and on.
func TestRolloutZeroDowntime(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	_, kc := applyBase(t, cp, "broad-rbac")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agentBin := testenv.AgentBinary(t)
	orig, err := os.ReadFile(migrateReqPath)
	if err != nil {
		testenv.Unavailable(t, "kernel without tcp_migrate_req: %v", err)
	}
	t.Cleanup(func() { _ = os.WriteFile(migrateReqPath, orig, 0o644) })
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}
	sts := startAppRole(ctx, t, cp)
	pod := startAppPod(ctx, t, cp, "cbdpr", "10.244.23.30")

	for _, migrate := range []string{"0", "1"} {
		t.Run("tcp_migrate_req="+migrate, func(t *testing.T) {
			if err := os.WriteFile(migrateReqPath, []byte(migrate+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			rollout(ctx, t, cp, kc, agentBin, sts.URL(), pod, migrate)
		})
	}
}

func rollout(ctx context.Context, t *testing.T, cp *harness.ControlPlane, kc, agentBin, stsURL string, pod *harness.Pod, tag string) {
	listen, err := freeServiceAddr()
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string) *harness.Agent {
		a, err := harness.StartAgent(ctx, harness.AgentConfig{Binary: agentBin, Dir: cp.Dir, Name: name, Kubeconfig: kc,
			NodeName: testNodeName, STSEndpoint: stsURL, Listen: listen, LogLevel: "info",
			// The clients loop as fast as they can from one pod, far beyond
			// the per-pod request limit; this test is about the rollout.
			ExtraArgs: []string{"--pod-request-qps=100000", "--pod-request-burst=100000"}})
		if err != nil {
			t.Fatalf("starting agent %s on %s: %v", name, listen, err)
		}
		t.Cleanup(a.Stop)
		return a
	}
	a := start("agent-a-" + tag)

	clients := []*client{
		{name: "SDK-like: keep-alive, 1 retry", keepAlive: true, retry: true},
		{name: "SDK-like: keep-alive, 1 retry (2nd)", keepAlive: true, retry: true},
		{name: "keep-alive, no retry", keepAlive: true},
		{name: "new connection per request, no retry"},
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const maxAttempts = 30000 // per client; the phases below need far fewer
	url := "http://" + listen + "/v1/credentials"
	for _, c := range clients {
		c.firstFails, c.finalFails = map[string]int{}, map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, pod, url, stop, maxAttempts)
		}()
	}
	stopped := false
	stopClients := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopClients()
	allOK := func(n int64) func() bool {
		base := make([]int64, len(clients))
		for i, c := range clients {
			base[i] = c.ok.Load()
		}
		return func() bool {
			for i, c := range clients {
				if c.ok.Load()-base[i] < n {
					return false
				}
			}
			return true
		}
	}

	if err := waitFor(ctx, "clients served by A", allOK(100)); err != nil {
		t.Fatal(err)
	}
	b := start("agent-b-" + tag)
	if err := waitFor(ctx, "B serving its share", func() bool { return served(ctx, b) >= 100 }); err != nil {
		t.Fatalf("%v; clients:\n%s", err, report(clients))
	}
	servedA := served(ctx, a)
	a.Stop() // SIGTERM, then wait for the drain to end and A to exit
	if _, exitErr := a.Process.Exited(); exitErr != nil {
		t.Errorf("agent A exited with %v after SIGTERM; log:\n%s", exitErr, a.LogTail(20))
	}
	if err := waitFor(ctx, "clients served by B alone", allOK(100)); err != nil {
		t.Fatal(err)
	}
	stopClients()
	servedB := served(ctx, b)

	t.Logf("A served %.0f, B served %.0f (before A stopped, and after)\n%s", servedA, servedB, report(clients))
	defer func() {
		if t.Failed() {
			t.Logf("A log:\n%s\nB log:\n%s", a.LogTail(30), b.LogTail(30))
		}
	}()
	if servedA == 0 || servedB == 0 {
		t.Errorf("A served %.0f and B %.0f requests, want both > 0", servedA, servedB)
	}
	for _, c := range clients {
		if c.attempts.Load() >= maxAttempts {
			t.Errorf("client %q hit the attempt bound before the rollout ended", c.name)
		}
		if !c.retry {
			continue
		}
		if _, final := c.counts(); final != 0 || c.ok.Load() == 0 {
			t.Errorf("SDK-like client %q: %d failed requests, %d ok; want 0 failed", c.name, final, c.ok.Load())
		}
	}
}

func report(clients []*client) string {
	var b strings.Builder
	for _, c := range clients {
		b.WriteString("  " + c.String() + "\n")
	}
	return b.String()
}
