package kube

import (
	"os/exec"
	"strings"
	"testing"
)

// pkg/kube is the serving agent's client: core/v1 and authentication/v1.
// A client for more API groups (the audit's, in auditclient) is a
// subpackage, so that importing pkg/kube never links them.
func TestLinksOnlyCoreAndAuthentication(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(pkg, "k8s.io/client-go/kubernetes"), strings.HasPrefix(pkg, "k8s.io/client-go/informers"):
			t.Errorf("pkg/kube links %s", pkg)
		case pkg == "k8s.io/client-go/gentype", pkg == "k8s.io/client-go/testing",
			strings.HasPrefix(pkg, "k8s.io/apimachinery/pkg/util/managedfields"),
			strings.HasPrefix(pkg, "k8s.io/apimachinery/pkg/util/strategicpatch"),
			strings.HasPrefix(pkg, "k8s.io/kube-openapi/") && pkg != "k8s.io/kube-openapi/pkg/util":
			// gentype's fakes link client-go/testing, and with it managed
			// fields, structured-merge-diff and OpenAPI: 0.75 MiB of RSS on
			// every node (apimachinery's runtime needs kube-openapi's util).
			t.Errorf("pkg/kube links %s, which only tests and servers need", pkg)
		case strings.HasPrefix(pkg, "k8s.io/api/"):
			if group := strings.TrimPrefix(pkg, "k8s.io/api/"); group != "core/v1" && group != "authentication/v1" {
				t.Errorf("pkg/kube links API group %s", group)
			}
		}
	}
}
