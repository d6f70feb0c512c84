//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
)

// suite is what TestAgent's, TestGCP's and TestAzure's worlds each have:
// a control plane, our AWS STS (the harness's agent always has AWS flags),
// the agent's kubeconfig, one node's pods with addresses from the suite's
// own /24 (integration/README.md), and one agent.
type suite struct {
	root, dir string
	home      string // empty HOME for SDK clients
	agentBin  string
	cp        *harness.ControlPlane
	sts       *oidcsts.Server
	kc        string // the agent's kubeconfig
	pods      *harness.Pods
	agent     *harness.Agent

	subnet string // fmt pattern of the pods' addresses
	mu     sync.Mutex
	nextIP int
}

// newSuite checks for root, commands and the agent binary, and makes the
// suite's directories; start starts its parts.
func newSuite(t *testing.T, subnet string, commands ...string) *suite {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, commands...)
	agentBin := testenv.AgentBinary(t)
	root := testenv.RepoRoot(t)
	return &suite{root: root, dir: t.TempDir(), home: t.TempDir(), agentBin: agentBin, subnet: subnet, nextIP: 10}
}

// build builds the Go SDK client ./integration/sdk/go/<name> and returns
// its path.
func (s *suite) build(t *testing.T, name string) string {
	t.Helper()
	out := filepath.Join(s.dir, name)
	build := exec.Command("go", "build", "-o", out, "./integration/sdk/go/"+name)
	build.Dir = s.root
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the Go client %s: %v\n%s", name, err, b)
	}
	return out
}

// start starts the cluster (startCluster) and readies node's pods.
func (s *suite) start(t *testing.T, node, nsPrefix string) {
	t.Helper()
	s.startCluster(t)
	var err error
	s.pods, err = harness.NewPods(context.Background(), s.cp, node, nsPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.pods.Close(context.Background()); err != nil {
			t.Errorf("removing pods: %v", err)
		}
	})
}

// startCluster puts the service address on lo, starts the control plane
// and our STS, and writes the agent's kubeconfig: what every test of the
// package needs before its first agent, TestFaults too (whose scenarios
// make their own pods and agents).
func (s *suite) startCluster(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatalf("putting %s on lo: %v", netns.ServiceAddr4, err)
	}
	s.cp = testenv.StartControlPlane(t)
	var err error
	s.sts, err = s.cp.StartSTS(ctx, harness.STSConfig{})
	if err != nil {
		t.Fatalf("StartSTS: %v", err)
	}
	t.Cleanup(func() { s.sts.Close() })
	s.kc = filepath.Join(s.dir, "agent.kubeconfig")
	if err := s.cp.AgentKubeconfig(ctx, filepath.Join(s.root, "deploy/daemonset/rbac.yaml"), s.kc); err != nil {
		t.Fatalf("AgentKubeconfig: %v", err)
	}
}

// startAgent starts the suite's agent with cfg, its binary, directory,
// kubeconfig and STS filled in, listening on a free port of the service
// address, with CREDBROKER_E2E_AGENT_ARGS after cfg's own; a failed test
// logs its log's tail.
func (s *suite) startAgent(t *testing.T, cfg harness.AgentConfig) {
	t.Helper()
	cfg.Binary, cfg.Dir, cfg.Kubeconfig, cfg.STSEndpoint = s.agentBin, s.dir, s.kc, s.sts.URL()
	// Not port 80: a demo, a benchmark or another test package may hold it.
	cfg.Listen = net.JoinHostPort(netns.ServiceAddr4.String(), "0")
	cfg.ExtraArgs = append(cfg.ExtraArgs, strings.Fields(os.Getenv("CREDBROKER_E2E_AGENT_ARGS"))...)
	var err error
	s.agent, err = harness.StartAgent(context.Background(), cfg)
	if err != nil {
		t.Fatalf("StartAgent: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log tail:\n%s", s.agent.LogTail(40))
		}
		s.agent.Stop()
	})
}

// runInPod runs args inside p with env, in dir unless it is "", for at most
// timeout, and returns what it printed; its error names the program and
// the pod and carries what the program printed on both streams.
func runInPod(p *harness.Pod, timeout time.Duration, dir string, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := p.Exec(ctx, env, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s in pod %s: %w\nstdout: %s\nstderr: %s", filepath.Base(args[0]), p.Pod.Name, err, out, stderr.String())
	}
	return out, nil
}

// ip hands out the suite's pod addresses.
func (s *suite) ip() netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextIP++
	if s.nextIP > 250 {
		panic("e2e: out of pod addresses in " + s.subnet)
	}
	return netip.MustParseAddr(fmt.Sprintf(s.subnet, s.nextIP))
}

// pod starts a simulated pod ns/name on sa with the suite's next address.
func (s *suite) pod(t *testing.T, ns, name, sa string) *harness.Pod {
	t.Helper()
	p, err := s.pods.Start(context.Background(), harness.PodSpec{Namespace: ns, Name: name, ServiceAccount: sa, IP: s.ip()})
	if err != nil {
		t.Fatalf("starting pod %s/%s: %v", ns, name, err)
	}
	return p
}

// tokenRequestsByAudience counts the TokenRequests bound to a pod (the API
// server's audit log, so every client's, the agent's among them) by
// audience, joined with commas.
func (s *suite) tokenRequestsByAudience(t *testing.T, p *corev1.Pod) map[string]int {
	t.Helper()
	trs, err := s.cp.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	auds := map[string]int{}
	for _, tr := range trs {
		if tr.BoundUID == string(p.UID) {
			auds[strings.Join(tr.Audiences, ",")]++
		}
	}
	return auds
}

// tokenRequestsFor counts the TokenRequests bound to a pod, whatever their
// audience.
func (s *suite) tokenRequestsFor(t *testing.T, p *corev1.Pod) int {
	t.Helper()
	n := 0
	for _, c := range s.tokenRequestsByAudience(t, p) {
		n += c
	}
	return n
}

// concurrently calls f n times at once and returns its results in order.
func concurrently[R any](n int, f func() R) []R {
	results := make([]R, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = f() })
	}
	wg.Wait()
	return results
}
