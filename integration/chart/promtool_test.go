package chart_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool returns the binary promtool.sh built, or skips (fails under
// CI=true, where `make test` builds it first: a suite that skips passes
// while testing nothing).
func promtool(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("./promtool.sh", "--check").Output()
	path := strings.TrimSpace(string(out))
	if err != nil {
		msg := "promtool not built (" + path + "); run integration/chart/promtool.sh or `make alerts`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// TestAlertRules runs promtool's checks and unit tests on the rule file:
// every alert fires where it must and stays silent where it must not.
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	rules := filepath.Join(chartDir(t), "files/credbroker.rules.yaml")
	if out, err := exec.Command(bin, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "test", "rules", "testdata/alerts_test.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// Each alert is tested, in a firing and a silent case.
	b, err := os.ReadFile("testdata/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && (!fires[r.Alert] || !silent[r.Alert]) {
				t.Errorf("%s: testdata/alerts_test.yaml needs a case where it fires (%v) and one where it must not (%v)", r.Alert, fires[r.Alert], silent[r.Alert])
			}
		}
	}
}
