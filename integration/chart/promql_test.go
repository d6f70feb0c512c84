package chart_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// External metrics the alerts may name besides the agent's own: Prometheus'
// scrape health and kube-state-metrics' pod series. Everything else an
// expression names must be exported by the agent (TestExportedMetrics in
// integration_test.go scrapes a real one).
var externalMetrics = map[string]string{
	"up":                    "Prometheus, per scrape target",
	"kube_pod_status_ready": "kube-state-metrics",
	"kube_pod_info":         "kube-state-metrics",
	"kube_pod_status_phase": "kube-state-metrics",
	// CredbrokerWebhookFailingOpen: the API server's count of webhook
	// calls that failed and were ignored.
	"apiserver_admission_webhook_fail_open_count": "kube-apiserver",
}

// expression is one PromQL query shipped with the chart and where it is.
type expression struct {
	where, expr string
}

// grafanaVars stand in for the dashboard's variables so that the Prometheus
// parser can read its queries.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"$datasource", "prometheus", "$job", "credbroker-agent", "$node", ".*",
)

func dashboardExpressions(t testing.TB) []expression {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir(t), "files/credbroker-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var out []expression
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			out = append(out, expression{where: "panel " + p.Title + " target " + string(rune('A'+i)), expr: grafanaVars.Replace(tg.Expr)})
		}
	}
	// label_values(<selector>, label): the selector is PromQL.
	lv := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		m := lv.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, s)
			continue
		}
		out = append(out, expression{where: "variable " + v.Name, expr: grafanaVars.Replace(m[1])})
	}
	return out
}

// ruleGroups is a Prometheus rule file.
type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func readRules(t testing.TB) ruleGroups {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir(t), "files/credbroker.rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rg ruleGroups
	if err := yaml.UnmarshalStrict(b, &rg); err != nil {
		t.Fatalf("rules file: %v", err)
	}
	return rg
}

func ruleExpressions(t testing.TB) []expression {
	var out []expression
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			out = append(out, expression{where: "alert " + r.Alert, expr: r.Expr})
		}
	}
	return out
}

// metricNames parses expr and returns every metric name its selectors name.
func metricNames(t testing.TB, e expression) []string {
	t.Helper()
	node, err := parser.NewParser(parser.Options{}).ParseExpr(e.expr)
	if err != nil {
		t.Errorf("%s: %v\n%s", e.where, err, e.expr)
		return nil
	}
	var names []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				if m.Type != labels.MatchEqual {
					t.Errorf("%s: selects metric names by pattern (%s); name them", e.where, m)
				}
				name = m.Value
			}
		}
		if name == "" {
			t.Errorf("%s: a selector names no metric: %s", e.where, vs)
		}
		names = append(names, name)
		return nil
	})
	if len(names) == 0 {
		t.Errorf("%s: names no metric: %s", e.where, e.expr)
	}
	return names
}

// TestExpressionsParse: every dashboard query and alert expression is valid
// PromQL and names its metrics.
func TestExpressionsParse(t *testing.T) {
	for _, e := range append(dashboardExpressions(t), ruleExpressions(t)...) {
		metricNames(t, e)
	}
}

// TestDashboardCoversIssue: the dashboard shows what operators asked for.
func TestDashboardCoversIssue(t *testing.T) {
	var used []string
	for _, e := range dashboardExpressions(t) {
		used = append(used, metricNames(t, e)...)
	}
	for what, metric := range map[string]string{
		"requests by code":       "credbroker_requests_total",
		"latency percentiles":    "credbroker_request_duration_seconds_bucket",
		"cache hits":             "credbroker_cache_hits_total",
		"cache misses":           "credbroker_cache_misses_total",
		"upstream calls":         "credbroker_upstream_calls_total",
		"upstream latency":       "credbroker_upstream_duration_seconds_bucket",
		"refresh failures":       "credbroker_refresh_failures_total",
		"pods indexed":           "credbroker_pods_indexed",
		"requests limited":       "credbroker_guard_refused_requests_total",
		"connections limited":    "credbroker_guard_refused_connections_total",
		"fetch budget exhausted": "credbroker_pod_fetch_limited_total",
	} {
		if !slices.Contains(used, metric) {
			t.Errorf("no panel shows %s (%s)", what, metric)
		}
	}
}

// TestAlertsHaveRunbooks: every alert has a severity, a summary, and a
// runbook_url whose anchor is a heading of docs/operations.md.
func TestAlertsHaveRunbooks(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs/operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if h, ok := strings.CutPrefix(line, "### "); ok {
			anchors[strings.ToLower(strings.TrimSpace(h))] = true
		}
	}
	const prefix = "https://github.com/credbroker/agent/blob/main/docs/operations.md#"
	n := 0
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a severity label, a summary and a description", r.Alert)
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], prefix)
			if !ok || anchor != strings.ToLower(r.Alert) || !anchors[anchor] {
				t.Errorf("%s: runbook_url %q must be %s%s, a '### %s' heading of docs/operations.md", r.Alert, r.Annotations["runbook_url"], prefix, strings.ToLower(r.Alert), r.Alert)
			}
		}
	}
	if n < 9 {
		t.Errorf("%d alerts, want the 9 of issue 12", n)
	}
}
