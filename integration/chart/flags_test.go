package chart_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// chartSetFlags are agent flags no value maps to, and why.
var chartSetFlags = map[string]string{
	"node-name":  "always $(NODE_NAME), from the pod's spec.nodeName",
	"kubeconfig": "the agent uses its in-cluster config",
	"sts-region": "AWS_REGION in the environment (aws.region)",
	"proc-root":  "hostPID: true gives the agent the node's /proc, the flag's default",
}

// agentBinary builds this work tree's agent (the module replaces
// github.com/credbroker/agent with ../..).
func agentBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agent")
	out, err := exec.Command("go", "build", "-mod=mod", "-o", bin, "github.com/credbroker/agent/cmd/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("building the agent: %v\n%s", err, out)
	}
	return bin
}

// TestEveryAgentFlag: every flag of `agent serve` is set by some chart value
// in the all-on case (or is one the chart sets itself), and the agent
// accepts the arguments the chart renders: it gets past flag parsing and
// validation to loading its (missing) kubeconfig.
func TestEveryAgentFlag(t *testing.T) {
	bin := agentBinary(t)
	help, _ := exec.Command(bin, "serve", "-h").CombinedOutput()
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(string(help), -1) {
		flags = append(flags, m[1])
	}
	if len(flags) < 20 {
		t.Fatalf("found %d flags in `agent serve -h`:\n%s", len(flags), help)
	}
	objs, _ := render(t, allOn(), monitoringAPI)
	c := dig(objs["DaemonSet/"+namespace+"/credbroker-agent"], "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
	var args []string
	for _, a := range c["args"].([]any) {
		args = append(args, strings.ReplaceAll(a.(string), "$(NODE_NAME)", "node-1"))
	}
	for _, f := range flags {
		if chartSetFlags[f] != "" {
			continue
		}
		if !slices.ContainsFunc(args, func(a string) bool { return a == "--"+f || strings.HasPrefix(a, "--"+f+"=") }) {
			t.Errorf("agent flag --%s has no chart value (or is not set in allOn)", f)
		}
	}

	cmd := exec.Command(bin, append(args[:len(args):len(args)], "--kubeconfig=/nonexistent/kubeconfig")...)
	cmd.Env = []string{"AWS_REGION=eu-west-1", "PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the agent started without a kubeconfig:\n%s", out)
	}
	if !strings.Contains(string(out), "/nonexistent/kubeconfig") {
		t.Errorf("the agent refused the chart's arguments before loading its kubeconfig:\n%s\nargs: %v", out, args)
	}
}
