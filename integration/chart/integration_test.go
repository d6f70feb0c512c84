//go:build integration

package chart_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/testenv"
)

// operatorCRDs are the Prometheus Operator CRDs the chart's objects use,
// from the prometheus-operator module this module pins (example/ holds the
// YAML the operator's own bundle is built from).
var operatorCRDs = []string{
	"monitoring.coreos.com_servicemonitors.yaml",
	"monitoring.coreos.com_podmonitors.yaml",
	"monitoring.coreos.com_prometheusrules.yaml",
}

// operatorModule is the Prometheus Operator release whose CRDs the chart's
// objects are checked against. Nothing imports its packages, so the pin is
// here rather than in go.mod (go mod tidy would drop it there).
const operatorModule = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

// operatorModuleDir downloads (if needed) the pinned prometheus-operator
// module through the module proxy, checksum-verified, and returns its
// directory in the module cache.
func operatorModuleDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", operatorModule)
	cmd.Dir = t.TempDir() // outside this module: its go.sum stays as it is
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s%s", operatorModule, err, out, stderr.String())
	}
	var dir string
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), `"Dir": `); ok {
			dir, _ = strconv.Unquote(strings.TrimSuffix(v, ","))
		}
	}
	if dir == "" {
		t.Fatalf("no module directory in: %s", out)
	}
	return filepath.Join(dir, "example/prometheus-operator-crd")
}

// TestServerSideDryRun sends the rendered chart to a real API server with
// the Prometheus Operator's CRDs installed, in dry-run mode: every object's
// schema, the CRD objects against the CRDs' OpenAPI validation, and the
// admission policies' CEL compilation.
func TestServerSideDryRun(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	ctx := context.Background()
	crdDir := operatorModuleDir(t)
	for _, f := range operatorCRDs {
		if _, err := cp.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(crdDir, f)); err != nil {
			t.Fatalf("installing %s: %v", f, err)
		}
	}
	if _, err := cp.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/servicemonitors.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{namespace, "monitoring"} {
		if err := cp.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	for name, vals := range valueMatrix() {
		t.Run(name, func(t *testing.T) {
			manifest, _, err := renderErr(t, vals, monitoringAPI)
			if err != nil {
				t.Fatal(err)
			}
			objs := splitObjects(t, []byte(manifest))
			path := filepath.Join(t.TempDir(), "chart.yaml")
			if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := cp.Kubectl(ctx, "apply", "--server-side", "--dry-run=server", "--field-manager=chart-test", "-f", path)
			if err != nil {
				t.Fatalf("server-side dry run: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != len(objs) {
				t.Errorf("dry run reported %d objects, want %d:\n%s", len(lines), len(objs), out)
			}
			for _, l := range lines {
				if !strings.HasSuffix(l, "(server dry run)") {
					t.Errorf("dry run line %q", l)
				}
			}
		})
	}
	if _, err := cp.Client.AppsV1().DaemonSets(namespace).Get(ctx, "credbroker-agent", metav1.GetOptions{}); err == nil {
		t.Error("a DaemonSet exists after dry runs only")
	}
}

// TestExportedMetrics runs the real agent against the integration control
// plane, lets it fetch credentials for a pod (so that every labelled series,
// the upstream ones included, exists), scrapes /metrics and checks that every
// metric the dashboard and the alerts name is one it exports.
func TestExportedMetrics(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	bin, err := harness.AgentBinary()
	if err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const role = "arn:aws:iam::123456789012:role/app"
	if _, err := cp.CreateServiceAccount(ctx, "team", "app", role); err != nil {
		t.Fatal(err)
	}
	sts, err := cp.StartSTS(ctx, harness.STSConfig{Addr: "127.0.0.1:0", Roles: map[string]string{role: "system:serviceaccount:team:app"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sts.Close() })
	// A pod bound to the agent's node with an address: the agent prefetches
	// its credentials at start. No traffic goes to the address.
	if _, err := cp.CreatePod(ctx, harness.PodSpec{Namespace: "team", Name: "app", ServiceAccount: "app", NodeName: "node-1", IP: netip.MustParseAddr("10.244.250.10")}); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(cp.Dir, "agent.kubeconfig")
	if err := cp.AgentKubeconfig(ctx, "", kc); err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := harness.StartAgent(ctx, harness.AgentConfig{
		Binary: bin, Dir: cp.Dir, Kubeconfig: kc, NodeName: "node-1", STSEndpoint: sts.URL(),
		Listen: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)

	var families map[string]*dto.MetricFamily
	deadline := time.Now().Add(30 * time.Second)
	for {
		text, err := agent.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		if families, err = parser.TextToMetricFamilies(strings.NewReader(text)); err != nil {
			t.Fatalf("parsing /metrics: %v", err)
		}
		if harness.MetricSum(text, "credbroker_upstream_calls_total", map[string]string{"upstream": "aws", "result": "ok"}) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no successful exchange counted after 30 s; agent log:\n%s", agent.LogTail(40))
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	exported := map[string]bool{}
	for name, f := range families {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			exported[name+"_bucket"], exported[name+"_sum"], exported[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			exported[name], exported[name+"_sum"], exported[name+"_count"] = true, true, true
		default:
			exported[name] = true
		}
	}
	t.Logf("the agent exports %d series names", len(exported))

	check := func(what string, exprs []expression, allowed map[string]string) {
		var names []string
		for _, e := range exprs {
			for _, n := range metricNames(t, e) {
				if !exported[n] && allowed[n] == "" {
					t.Errorf("%s %s names %s, which the agent does not export", what, e.where, n)
				}
				names = append(names, n)
			}
		}
		slices.Sort(names)
		t.Logf("%s: %d expressions, metrics %v", what, len(exprs), slices.Compact(names))
	}
	check("dashboard", dashboardExpressions(t), map[string]string{"up": externalMetrics["up"]})
	check("rules", ruleExpressions(t), externalMetrics)
	if t.Failed() {
		var all []string
		for n := range exported {
			all = append(all, n)
		}
		slices.Sort(all)
		fmt.Fprintf(os.Stderr, "exported: %v\n", all)
	}
}
