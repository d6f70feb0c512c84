package verify

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies: the package must not link client-go's generated
// clientset (it drags every API group in) nor API groups besides
// authentication/v1; a receiving service imports this package and should
// not pay for them.
func TestDependencies(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == "k8s.io/client-go/kubernetes", strings.HasPrefix(dep, "k8s.io/client-go/kubernetes/"):
			t.Errorf("pkg/verify depends on %s (the generated clientset)", dep)
		case strings.HasPrefix(dep, "k8s.io/api/") && dep != "k8s.io/api/authentication/v1":
			t.Errorf("pkg/verify depends on %s (only authentication/v1 is needed)", dep)
		case dep == "testing":
			t.Errorf("pkg/verify links testing")
		}
	}
}
