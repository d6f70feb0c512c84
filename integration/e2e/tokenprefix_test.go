//go:build integration

package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/testenv"
)

// The agent reads the real API server's audiences at start and refuses a
// --token-audience-prefix that covers one. The harness runs kube-apiserver
// with --api-audiences=https://kubernetes.default.svc,<issuer>: its
// discovery document names only the issuer, the agent's ServiceAccount
// token (minted for the API server's audiences) names both.
func TestTokenAudiencePrefixAgainstTheAPIServer(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	agentBin := testenv.AgentBinary(t)
	ctx := context.Background()
	kc := filepath.Join(cp.Dir, "agent.kubeconfig")
	if err := cp.AgentKubeconfig(ctx, "", kc); err != nil {
		t.Fatalf("AgentKubeconfig: %v", err)
	}
	port, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	args := func(prefix string) []string {
		return []string{"--token-audience-prefix=" + prefix, "--attest=off"}
	}
	for prefix, want := range map[string]string{
		// In the agent's token only.
		"https://kubernetes.default.svc": `"https://kubernetes.default.svc" (the Kubernetes API server's audience)`,
		// The issuer, from discovery, in its trailing-slash spelling.
		cp.Issuer + "/": strconv.Quote(cp.Issuer) + ` (the Kubernetes API server's audience, spelled ` + strconv.Quote(cp.Issuer+"/") + `)`,
		// AWS's, refused before the API server is asked.
		"https://sts.": `"sts.amazonaws.com" (the aws exchange's audience`,
	} {
		t.Run(prefix, func(t *testing.T) {
			cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(cctx, agentBin, append([]string{"serve", "--node-name=node-prefix", "--kubeconfig=" + kc,
				"--listen=127.0.0.1:" + strconv.Itoa(port), "--probe-listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
				"--sts-endpoint=http://127.0.0.1:1", "--log-format=text"}, args(prefix)...)...)
			out, err := cmd.CombinedOutput()
			if err == nil || cctx.Err() != nil {
				t.Fatalf("the agent did not stop at start (%v):\n%s", err, out)
			}
			// The error is a JSON string in the log: its quotes are escaped.
			text := strings.ReplaceAll(string(out), `\"`, `"`)
			if !strings.Contains(text, "--token-audience-prefix "+strconv.Quote(prefix)+" covers") || !strings.Contains(text, want) {
				t.Fatalf("the agent's error does not name %s:\n%s", want, out)
			}
		})
	}
	// A service prefix: the agent starts and serves.
	a, err := harness.StartAgent(ctx, harness.AgentConfig{Binary: agentBin, Dir: cp.Dir, Name: "agent-prefix", Kubeconfig: kc,
		NodeName: "node-prefix", Listen: "127.0.0.1:" + strconv.Itoa(port), STSEndpoint: "http://127.0.0.1:1",
		ExtraArgs: args("https://svc.e2e/")})
	if err != nil {
		t.Fatalf("the agent with a service prefix: %v", err)
	}
	a.Stop()
}
