//go:build integration

package deploy_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/testenv"
)

// TestInitSubcommand runs `agent init` as the DaemonSet's init container
// does, twice, inside a fresh network namespace standing in for a node.
func TestInitSubcommand(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	bin := testenv.AgentBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "cbdpinit"
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	_ = exec.Command("ip", "netns", "del", ns).Run() // leftovers of a crashed run
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	for i := range 2 {
		// The node's /proc/sys/net, as the DaemonSet mounts it.
		out := run("netns", "exec", ns, bin, "init", "--proc-sys-net=/proc/sys/net")
		t.Logf("agent init #%d: %s", i+1, strings.TrimSpace(out))
	}
	addrs := run("-n", ns, "-o", "addr", "show")
	if n := strings.Count(addrs, " 169.254.170.23/32 "); n != 1 {
		t.Errorf("169.254.170.23/32 appears %d times in the namespace, want once:\n%s", n, addrs)
	}
	// A namespace without IPv6 connectivity gets no IPv6 service address.
	if strings.Contains(addrs, "fd00:ec2::23") {
		t.Errorf("fd00:ec2::23 configured in a namespace without IPv6:\n%s", addrs)
	}
	if got := strings.TrimSpace(run("netns", "exec", ns, "cat", "/proc/sys/net/ipv4/tcp_migrate_req")); got != "1" {
		t.Errorf("tcp_migrate_req in the namespace = %q, want 1", got)
	}
}
