//go:build integration

// Package audit_test runs `agent audit` (the bin/agent binary) against a
// real kube-apiserver and etcd: a seeded cluster with one misconfiguration
// of each kind and decoys (audit_test.go), the jq pipeline on the
// same cluster, the RBAC of deploy/audit, and a scale run (scale_test.go).
package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/audit"
)

// auditPolicy records every request of every ServiceAccount (metadata
// only), which the permission-debt check reads. It replaces the harness's
// policy (a later --audit-policy-file wins), which records TokenRequests
// only.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
`

type cluster struct {
	cp    *harness.ControlPlane
	root  string
	agent string // bin/agent
	dir   string
	// auditKC authenticates as credbroker-system/credbroker-audit, bound
	// by deploy/audit and nothing else.
	auditKC string
}

// startCluster starts a control plane for one test, with deploy/audit
// applied, or reports it unavailable (a skip; a failure under CI=true).
func startCluster(t *testing.T) *cluster {
	t.Helper()
	testenv.RequireCommand(t, "kubectl", "jq")
	testenv.K8sBinDir(t)
	bin := testenv.AgentBinary(t)
	root := testenv.RepoRoot(t)
	dir := t.TempDir()
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cp, err := harness.StartControlPlane(ctx, harness.ControlPlaneConfig{
		Dir: filepath.Join(dir, "cp"), ExtraAPIServerFlags: []string{"--audit-policy-file=" + policy},
	})
	if err != nil {
		t.Fatalf("StartControlPlane: %v", err)
	}
	t.Cleanup(cp.Stop)
	c := &cluster{cp: cp, root: root, agent: bin, dir: dir, auditKC: filepath.Join(dir, "audit.kubeconfig")}
	if err := cp.EnsureNamespace(ctx, "credbroker-system"); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, "apply", "-k", filepath.Join(root, "deploy/audit"))
	tok, err := cp.ServiceAccountToken(ctx, "credbroker-system", "credbroker-audit", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.WriteKubeconfig(c.auditKC, "credbroker-audit", tok); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) kubectl(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := c.cp.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kubectlAs runs kubectl with a ServiceAccount's token.
func (c *cluster) kubectlAs(t *testing.T, namespace, sa string, args ...string) {
	t.Helper()
	ctx := context.Background()
	tok, err := c.cp.ServiceAccountToken(ctx, namespace, sa, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(c.dir, namespace+"-"+sa+".kubeconfig")
	if err := c.cp.WriteKubeconfig(kc, sa, tok); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kc}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("kubectl as %s/%s %v: %v: %s", namespace, sa, args, err, out)
	}
}

// run is one `agent audit` run: its exit status, report and resources.
type run struct {
	code    int
	report  audit.Report
	stdout  []byte
	stderr  []byte
	elapsed time.Duration
	// maxRSS is the process's peak resident set, in bytes (getrusage).
	maxRSS int64
	// peakHeapMB is the largest Go heap in the GC trace (auditTraced).
	peakHeapMB int
}

// audit runs bin/agent audit with kubeconfig kc and args; -o json unless
// args say otherwise.
func (c *cluster) audit(t *testing.T, kc string, args ...string) run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{"audit", "--kubeconfig", kc}, args...)
	jsonOut := true
	for _, a := range args {
		if a == "-o" || strings.HasPrefix(a, "-o=") || strings.HasPrefix(a, "--output") {
			jsonOut = a == "-o=json" || a == "--output=json"
		}
	}
	if jsonOut {
		full = append(full, "-o", "json")
	}
	cmd := exec.CommandContext(ctx, c.agent, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := run{stdout: stdout.Bytes(), stderr: stderr.Bytes(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("agent audit: %v", err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = ru.Maxrss * 1024 // KiB on Linux
	}
	if jsonOut && r.code != 2 {
		if err := json.Unmarshal(r.stdout, &r.report); err != nil {
			t.Fatalf("agent audit %v: exit %d, output is not a JSON report: %v\n%s\nstderr: %s", args, r.code, err, r.stdout, r.stderr)
		}
	}
	return r
}
