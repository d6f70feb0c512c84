//go:build integration

package harness_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
)

// Another process may take a picked port before etcd or kube-apiserver
// binds it; the start must go on with fresh ports rather than fail.
func TestStartControlPlaneSurvivesATakenPort(t *testing.T) {
	// Picks 1 and 2 are etcd's client and peer ports, 3 and 4 its second
	// try's, 5 kube-apiserver's and 6 its second try's. Picks 1 and 5 are
	// held busy from the moment they are returned.
	var picks []int
	var held []net.Listener
	t.Cleanup(harness.SetPortPicker(func(host string) (int, error) {
		port, err := harness.FreePort(host)
		if err != nil {
			return 0, err
		}
		picks = append(picks, port)
		if n := len(picks); n == 1 || n == 5 {
			l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
			if err != nil {
				return 0, err
			}
			held = append(held, l)
		}
		return port, nil
	}))
	t.Cleanup(func() {
		for _, l := range held {
			l.Close()
		}
	})

	ctx := context.Background()
	cp, err := harness.StartControlPlane(ctx, harness.ControlPlaneConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("StartControlPlane with ports taken: %v", err)
	}
	t.Cleanup(cp.Stop)
	if len(picks) != 6 {
		t.Fatalf("picked %d ports (%v), want 6: two for each etcd start, one for each kube-apiserver start", len(picks), picks)
	}
	if want := ":" + strconv.Itoa(picks[5]); !strings.HasSuffix(cp.URL, want) || cp.Issuer != cp.URL {
		t.Errorf("URL %s, issuer %s: want both on the second pick %s", cp.URL, cp.Issuer, want)
	}
	if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Errorf("the control plane started on fresh ports does not serve: %v", err)
	}
}
