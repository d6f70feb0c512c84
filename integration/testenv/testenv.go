// Package testenv decides what an integration test does when the machine
// cannot run it. On a developer's machine it skips, with the reason; under CI
// (CI=true) it fails, because a suite that skips everything would pass while
// testing nothing.
package testenv

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/internal/testfake"
)

// CI reports whether the tests run under CI, where missing prerequisites are
// failures.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable stops the test because a prerequisite is missing: Skip
// normally, Fatal under CI.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	testfake.Unavailable(tb, format, args...)
}

// RequireRoot stops the test unless it runs as root, which network
// namespaces and the link-local service address need.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Unavailable(tb, "must run as root (network namespaces, addresses on lo)")
	}
}

// RequireCommand stops the test unless every named command is on PATH, and
// returns the first one's path.
func RequireCommand(tb testing.TB, names ...string) string {
	tb.Helper()
	var first string
	for i, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			Unavailable(tb, "command %q not found on PATH", name)
		}
		if i == 0 {
			first = p
		}
	}
	return first
}

// AgentBinary is bin/agent (harness.AgentBinary), or the test stops as
// unavailable: a missing build is a prerequisite, not a failure of the code
// under test.
func AgentBinary(tb testing.TB) string {
	tb.Helper()
	return available(tb, harness.AgentBinary)
}

// K8sBinDir is the folder of the Kubernetes binaries (harness.K8sBinDir),
// or the test stops as unavailable.
func K8sBinDir(tb testing.TB) string {
	tb.Helper()
	return available(tb, harness.K8sBinDir)
}

// available is find's path, or the test stops as unavailable with its error.
func available(tb testing.TB, find func() (string, error)) string {
	tb.Helper()
	p, err := find()
	if err != nil {
		Unavailable(tb, "%v", err)
	}
	return p
}

// RepoRoot is the repository's root (harness.RepoRoot). Unlike a missing
// binary, not finding it is a failure: the tests run from inside the tree.
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	r, err := harness.RepoRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// StartControlPlane starts etcd and kube-apiserver for one test (stopped at
// its end), or reports them unavailable (a skip, a failure under CI).
func StartControlPlane(tb testing.TB) *harness.ControlPlane {
	tb.Helper()
	RequireRoot(tb)
	RequireCommand(tb, "ip", "kubectl")
	K8sBinDir(tb)
	cp, err := harness.StartControlPlane(context.Background(), harness.ControlPlaneConfig{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatalf("StartControlPlane: %v", err)
	}
	tb.Cleanup(cp.Stop)
	return cp
}
