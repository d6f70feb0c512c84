package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The generated clientset and informers register every Kubernetes API
// group, and the linker keeps all of their code: 11 MB more binary and
// 9 MiB more RSS on every node (docs/benchmarks.md). The agent reaches the
// API server through pkg/kube instead; this keeps it that way.
func TestAgentLinksOnlyTheAPIGroupsItUses(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	// core and authentication for the agent; rbac, apps and batch for
	// `agent audit`, which reads bindings and workload owners; admission
	// for `agent webhook`'s AdmissionReview.
	allowed := []string{"core/v1", "authentication/v1", "rbac/v1", "apps/v1", "batch/v1", "admission/v1"}
	for _, pkg := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(pkg, "k8s.io/client-go/kubernetes"), strings.HasPrefix(pkg, "k8s.io/client-go/informers"),
			strings.HasPrefix(pkg, "k8s.io/client-go/applyconfigurations"):
			t.Errorf("the agent links %s; use pkg/kube", pkg)
		case pkg == "k8s.io/client-go/gentype", pkg == "k8s.io/client-go/testing",
			strings.HasPrefix(pkg, "k8s.io/apimachinery/pkg/util/managedfields"):
			// gentype's fakes link client-go/testing, and with it managed
			// fields and structured-merge-diff's merge code: 0.75 MiB of RSS.
			t.Errorf("the agent links %s, which only tests need; use pkg/kube's Resource", pkg)
		case strings.HasPrefix(pkg, "k8s.io/api/"):
			if group := strings.TrimPrefix(pkg, "k8s.io/api/"); !slices.Contains(allowed, group) {
				t.Errorf("the agent links API group %s", group)
			}
		}
	}
}
