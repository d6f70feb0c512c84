//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
)

const (
	attestNode   = "node-attest"
	attestPrefix = "cbat"
	attestSubnet = "10.244.5.%d" // TestAttest's /24 (integration/README.md)
)

// TestAttest runs the agent binary with --attest=netns against a real API
// server, with pods whose namespaces hold a process in a cgroup named
// after the pod's UID (harness.Pods.Attestable), as the kubelet's are: the
// wiring (ConnContext, the resolver decorator, the start-up check, the
// metrics) end to end. The kernel's cases (corrected, refused, stale
// sockets) are pkg/attest's tests; the real kubelet's are integration/node.
func TestAttest(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	binDir := testenv.K8sBinDir(t)
	agentBin := testenv.AgentBinary(t)
	root := testenv.RepoRoot(t)
	ctx := context.Background()
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort(netns.ServiceAddr4.String())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cp, err := harness.StartControlPlane(ctx, harness.ControlPlaneConfig{Dir: dir, BinDir: binDir})
	if err != nil {
		t.Fatalf("StartControlPlane: %v", err)
	}
	t.Cleanup(cp.Stop)
	sts, err := cp.StartSTS(ctx, harness.STSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sts.Close() })
	kc := filepath.Join(dir, "agent.kubeconfig")
	if err := cp.AgentKubeconfig(ctx, filepath.Join(root, "deploy/daemonset/rbac.yaml"), kc); err != nil {
		t.Fatal(err)
	}
	pods, err := harness.NewPods(ctx, cp, attestNode, attestPrefix)
	if err != nil {
		t.Fatal(err)
	}
	pods.Attestable = true
	t.Cleanup(func() {
		if err := pods.Close(context.Background()); err != nil {
			t.Errorf("removing pods: %v", err)
		}
	})

	role := func(name string) string { return "arn:aws:iam::" + oidcsts.DefaultAccountID + ":role/" + name }
	for _, sa := range []string{"app", "victim"} {
		sts.TrustRole(role(sa), "system:serviceaccount:attest:"+sa)
		if _, err := cp.CreateServiceAccount(ctx, "attest", sa, role(sa)); err != nil {
			t.Fatal(err)
		}
	}
	ip := func(n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf(attestSubnet, n)) }
	app, err := pods.Start(ctx, harness.PodSpec{Namespace: "attest", Name: "app", ServiceAccount: "app", IP: ip(10)})
	if err != nil {
		t.Fatal(err)
	}

	agent, err := harness.StartAgent(ctx, harness.AgentConfig{
		Binary: agentBin, Dir: dir, Name: "agent-attest", Kubeconfig: kc, NodeName: attestNode,
		Listen: net.JoinHostPort(netns.ServiceAddr4.String(), strconv.Itoa(port)), STSEndpoint: sts.URL(),
		ExtraArgs: []string{"--attest=netns"},
	})
	if err != nil {
		t.Fatalf("StartAgent: %v", err)
	}
	t.Cleanup(agent.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log tail:\n%s", agent.LogTail(40))
		}
	})

	metric := func(t *testing.T, series string) float64 {
		t.Helper()
		m, err := agent.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(m, "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
		t.Fatalf("no series %s in the agent's metrics", series)
		return 0
	}
	type answer struct {
		status int
		code   string
		arn    string
	}
	get := func(t *testing.T, c *http.Client) answer {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, agent.URL, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Code        string
			AccessKeyID string `json:"AccessKeyId"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		a := answer{status: resp.StatusCode, code: body.Code}
		if resp.StatusCode == 200 {
			id, ok := sts.Lookup(body.AccessKeyID)
			if !ok {
				t.Fatalf("access key %s not issued by the STS", body.AccessKeyID)
			}
			a.arn = id.RoleArn
		}
		return a
	}

	t.Run("Available", func(t *testing.T) {
		if v := metric(t, "credbroker_attest_available"); v != 1 {
			t.Errorf("credbroker_attest_available = %v, want 1", v)
		}
	})

	t.Run("AttestedOncePerConnection", func(t *testing.T) {
		before := metric(t, `credbroker_attest_total{result="attested"}`)
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: app.NS.DialContext}}
		defer c.CloseIdleConnections()
		for i := range 3 {
			if a := get(t, c); a.status != 200 || a.arn != role("app") {
				t.Fatalf("request %d on one connection: %+v, want 200 with role app", i, a)
			}
		}
		if n := metric(t, `credbroker_attest_total{result="attested"}`) - before; n != 1 {
			t.Errorf("attested %v times for 3 requests on one keep-alive connection, want 1", n)
		}
		// Who got what: the grant is logged once for the connection (two
		// of the three answers came from cache), with the pod and role.
		if n := metric(t, "credbroker_attest_grants_logged_total"); n != 1 {
			t.Errorf("credbroker_attest_grants_logged_total = %v after 3 requests on one connection, want 1", n)
		}
		if tail := agent.LogTail(200); !strings.Contains(tail, "credentials served on an attested connection") ||
			!strings.Contains(tail, string(app.Pod.UID)) || !strings.Contains(tail, role("app")) {
			t.Errorf("no trace of the grant (pod UID %s, role app) in the agent's log:\n%s", app.Pod.UID, tail)
		}
	})

	t.Run("StaleStatusNeverServesTheOldPod", func(t *testing.T) {
		// The victim is served, then its sandbox and namespace go while
		// the API server still gives it its address (a paused kubelet),
		// and a namespace that is no pod takes the address.
		victim, err := pods.Start(ctx, harness.PodSpec{Namespace: "attest", Name: "victim", ServiceAccount: "victim", IP: ip(11)})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			a := get(t, victim.HTTPClient())
			if a.status == 200 {
				if a.arn != role("victim") {
					t.Fatalf("victim served %s", a.arn)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("victim not served: %+v", a)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := victim.StopSandbox(); err != nil {
			t.Fatal(err)
		}
		if err := victim.NS.Close(); err != nil {
			t.Fatal(err)
		}
		squatter, err := netns.Create(ctx, netns.Spec{Name: attestPrefix + "-sq", IP: ip(11)})
		if err != nil {
			t.Fatal(err)
		}
		defer squatter.Close()
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: squatter.DialContext, DisableKeepAlives: true}}
		before := metric(t, `credbroker_attest_total{result="refused"}`)
		for i := range 5 {
			a := get(t, c)
			if a.status == 200 {
				t.Fatalf("request %d from the squatter served %s: the informer's pod, not the kernel's", i, a.arn)
			}
			if a.status != 503 || a.code != "PodNotIdentified" {
				t.Errorf("request %d from the squatter: %+v, want 503 PodNotIdentified", i, a)
			}
		}
		if n := metric(t, `credbroker_attest_total{result="refused"}`) - before; n != 5 {
			t.Errorf("refused += %v, want 5", n)
		}
	})
}
