package chart_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	releaseName = "credbroker"
	namespace   = "credbroker-system"
	// releaseNamespace is helm's -n: it holds only the release record.
	releaseNamespace = "kube-system"
	monitoringAPI    = "monitoring.coreos.com/v1"
	kubeVersion      = "v1.37.2"
)

// repoRoot is the agent's repository: this module lives in integration/chart.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func chartDir(t testing.TB) string { return filepath.Join(repoRoot(t), "deploy/helm/credbroker") }

// object is one rendered Kubernetes object, as YAML decodes it.
type object map[string]any

func (o object) key() string {
	md, _ := o["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	return fmt.Sprintf("%v/%s/%s", o["kind"], ns, name)
}

// splitObjects decodes a multi-document YAML stream, skipping empty
// documents, keyed by kind/namespace/name.
func splitObjects(t testing.TB, manifest []byte) map[string]object {
	t.Helper()
	out := map[string]object{}
	r := utilyaml.NewYAMLReader(bufioReader(manifest))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("splitting YAML: %v", err)
		}
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("parsing a rendered document: %v\n%s", err, doc)
		}
		if len(o) == 0 {
			continue
		}
		if _, dup := out[o.key()]; dup {
			t.Fatalf("%s rendered twice", o.key())
		}
		out[o.key()] = o
	}
}

// render renders the chart as `helm template` would, with the given values
// and, on top of Helm's defaults, the given API versions.
func render(t testing.TB, values map[string]any, apiVersions ...string) (map[string]object, string) {
	t.Helper()
	manifest, notes, err := renderErr(t, values, apiVersions...)
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	return splitObjects(t, []byte(manifest)), notes
}

func renderErr(t testing.TB, values map[string]any, apiVersions ...string) (string, string, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir(t))
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.ClientOnly, install.DryRun, install.Replace = true, true, true
	// The release record's namespace; the objects go to namespace.name.
	install.ReleaseName, install.Namespace = releaseName, releaseNamespace
	install.APIVersions = apiVersions
	// Helm's library default is Kubernetes 1.20; the chart needs 1.30 (its
	// admission policies). This is the version of the integration tests'
	// API server.
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	rel, err := install.Run(chrt, values)
	if err != nil {
		return "", "", err
	}
	return rel.Manifest, rel.Info.Notes, nil
}

// kustomize renders a kustomization directory with kustomize's Go API (the
// one kubectl kustomize embeds).
func kustomize(t testing.TB, dir string) map[string]object {
	t.Helper()
	opts := krusty.MakeDefaultOptions()
	opts.LoadRestrictions = kusttypes.LoadRestrictionsNone
	rm, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	// Each resource as kustomize parsed it, through JSON: its YAML output,
	// parsed again, differs from the source in the line breaks of folded
	// CEL expressions.
	out := map[string]object{}
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		j, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var o object
		if err := yaml.Unmarshal(j, &o); err != nil {
			t.Fatal(err)
		}
		out[o.key()] = o
	}
	return out
}

// withoutLabels drops what the comparison leaves aside: labels on objects
// and on pod templates (the chart adds Helm's; selectors stay compared).
func withoutLabels(objs map[string]object) map[string]object {
	out := map[string]object{}
	for k, o := range objs {
		c := deepCopy(o)
		if md, ok := c["metadata"].(map[string]any); ok {
			delete(md, "labels")
		}
		if spec, ok := c["spec"].(map[string]any); ok {
			if tmpl, ok := spec["template"].(map[string]any); ok {
				if md, ok := tmpl["metadata"].(map[string]any); ok {
					delete(md, "labels")
				}
			}
		}
		out[k] = c
	}
	return out
}

func deepCopy(o object) object {
	b, err := yaml.Marshal(o)
	if err != nil {
		panic(err)
	}
	var c object
	if err := yaml.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c
}

func keys[M ~map[string]V, V any](m M) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// compareObjects fails t for every object that is missing, extra or
// different between the kustomize rendering and the chart's.
func compareObjects(t *testing.T, want, got map[string]object) {
	t.Helper()
	want, got = withoutLabels(want), withoutLabels(got)
	if !slices.Equal(keys(want), keys(got)) {
		t.Errorf("objects differ:\n kustomize: %v\n chart:     %v", keys(want), keys(got))
	}
	for _, k := range keys(want) {
		g, ok := got[k]
		if !ok {
			continue
		}
		if !reflect.DeepEqual(want[k], g) {
			t.Errorf("%s differs (-kustomize +chart):\n%s", k, cmp.Diff(map[string]any(want[k]), map[string]any(g)))
		}
	}
}

// TestChartMatchesKustomizeBase: with default values the chart renders the
// base's objects; with the startup taint on (rbac.broad), the base plus its
// component startup-taint (broad-rbac).
func TestChartMatchesKustomizeBase(t *testing.T) {
	root := repoRoot(t)
	t.Run("defaults", func(t *testing.T) {
		chartObjs, _ := render(t, nil)
		compareObjects(t, kustomize(t, filepath.Join(root, "deploy/daemonset")), chartObjs)
	})
	// Each component of the base against the value that turns it on.
	for _, c := range []struct {
		name, component string
		values          map[string]any
	}{
		{"startup-taint", "deploy/daemonset/startup-taint", map[string]any{"startupTaint": map[string]any{"enabled": true}}},
		{"attest-container", "deploy/daemonset/attest-container", map[string]any{"attest": map[string]any{"mode": "container"}}},
		{"broad-rbac", "deploy/daemonset/broad-rbac", map[string]any{"rbac": map[string]any{"broad": true}}},
		{"webhook", "deploy/webhook", map[string]any{"webhook": map[string]any{"enabled": true}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// kustomize takes only relative paths to other directories.
			overlay := t.TempDir()
			rel := func(p string) string {
				r, err := filepath.Rel(overlay, filepath.Join(root, p))
				if err != nil {
					t.Fatal(err)
				}
				return r
			}
			k := fmt.Sprintf("resources: [%s]\ncomponents: [%s]\n", rel("deploy/daemonset"), rel(c.component))
			if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
				t.Fatal(err)
			}
			chartObjs, _ := render(t, c.values)
			compareObjects(t, kustomize(t, overlay), chartObjs)
		})
	}
}

// TestChartLabels: every object carries the chart's labels and the base's
// part-of label; the DaemonSet's selector is the base's.
func TestChartLabels(t *testing.T) {
	objs, _ := render(t, allOn(), monitoringAPI)
	for k, o := range objs {
		md := o["metadata"].(map[string]any)
		labels, _ := md["labels"].(map[string]any)
		for _, l := range []string{"app.kubernetes.io/part-of", "app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/instance"} {
			if labels[l] == nil {
				t.Errorf("%s lacks the label %s", k, l)
			}
		}
	}
	ds := objs["DaemonSet/"+namespace+"/credbroker-agent"]
	sel := dig(ds, "spec", "selector", "matchLabels")
	if !reflect.DeepEqual(sel, map[string]any{"app.kubernetes.io/name": "credbroker-agent"}) {
		t.Errorf("selector = %v", sel)
	}
}

func dig(o map[string]any, path ...string) any {
	var cur any = o
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// allOn sets every switch and every agent value.
func allOn() map[string]any {
	return map[string]any{
		"image":            map[string]any{"tag": "v9.9.9", "digest": "sha256:" + strings.Repeat("a", 64), "pullPolicy": "IfNotPresent"},
		"imagePullSecrets": []any{map[string]any{"name": "regcred"}},
		"aws": map[string]any{
			"region": "eu-west-1", "audience": "sts.amazonaws.com", "roleAnnotation": "example.com/role",
			"allowedRoleARNs": []any{"arn:aws:iam::111122223333:role/team-*", "arn:aws:iam::111122223333:role/ops"},
			"stsEndpoint":     "https://sts.eu-west-1.amazonaws.com", "sessionDuration": "2h",
			"extraARNPartitions": []any{"minio"},
		},
		"gcp": map[string]any{
			"workloadIdentityProvider": "projects/123456/locations/global/workloadIdentityPools/pool-1/providers/prov-1",
			"projectID":                "proj-1", "projectNumber": "123456", "serviceAccountAnnotation": "example.com/gsa",
			"defaultScopes": []any{"https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/userinfo.email"},
			"stsEndpoint":   "https://sts.googleapis.com", "iamCredentialsEndpoint": "https://iamcredentials.googleapis.com",
			"tokenLifetime": "1h",
		},
		"azure": map[string]any{
			"tenantID": "00000000-0000-0000-0000-000000000001", "identityHeader": "guard-value", "audience": "api://AzureADTokenExchange",
			"authorityHost": "https://login.microsoftonline.com/", "clientIDAnnotation": "example.com/client-id",
			"tenantIDAnnotation": "example.com/tenant-id", "prefetchResources": []any{"https://vault.azure.net"},
		},
		"podToken": map[string]any{
			"audiencePrefix": "https://svc.example.com/", "audienceAnnotation": "example.com/token-audiences",
			"allowedAudiences": []any{"https://svc.example.com/*"},
		},
		"agent":             agentAllSet(),
		"rbac":              map[string]any{"nodeRestricted": "required"},
		"extraArgs":         []any{"--log-level=debug"},
		"extraEnv":          []any{map[string]any{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}},
		"tolerations":       []any{map[string]any{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}},
		"nodeSelector":      map[string]any{"kubernetes.io/os": "linux"},
		"affinity":          map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "node.kubernetes.io/instance-type", "operator": "Exists"}}}}}}},
		"priorityClassName": "system-cluster-critical",
		"podAnnotations":    map[string]any{"example.com/a": "b"},
		"podLabels":         map[string]any{"team": "platform"},
		"updateStrategy":    map[string]any{"maxSurge": "5%"},
		"admissionPolicy":   map[string]any{"enabled": true, "extraAudiences": []any{"example.com/other"}},
		"startupTaint":      map[string]any{"enabled": true, "key": "example.com/not-ready"},
		"serviceMonitor":    map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
		"podMonitor":        map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
		"prometheusRule":    map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
		"dashboards":        map[string]any{"enabled": true, "namespace": "monitoring"},
		"webhook": map[string]any{"enabled": true, "replicas": 3, "timeoutSeconds": 2, "awsAuthorizationToken": "guard",
			"certValidity": "72h", "nodeSelector": map[string]any{"kubernetes.io/os": "linux"},
			"tolerations": []any{map[string]any{"key": "dedicated", "operator": "Exists"}}},
	}
}

// agentAllSet gives every agent value (and so every flag they map to) a
// setting the agent accepts.
func agentAllSet() map[string]any {
	return map[string]any{
		"logFormat": "text", "logLevel": "warn", "recordEvents": false,
		"allowDefaultServiceAccount": true, "requireAuthorization": true, "enablePprof": true,
		"requestTimeout": "4s", "waitForPod": "1s", "tokenExpiration": "15m", "startupPrefetchWait": "5s", "shutdownGrace": "15s",
		"cacheSize": 2048, "handoffTimeout": "3s", "upstreamQPS": 25, "upstreamBurst": 50, "kubeAPIQPS": 20, "kubeAPIBurst": 40,
		"podRequestQPS": 10, "podRequestBurst": 50, "podMaxConnections": 32, "podFetchBurst": 5, "podFetchInterval": "10s",
		"podLogBurst": 3, "podLogInterval": "2m",
		"listen": "169.254.170.23:80", "probePort": 2713, "metricsPort": 2715,
	}
}

// TestLint runs helm lint (strict: warnings fail) over a matrix of values.
func TestLint(t *testing.T) {
	for name, vals := range valueMatrix() {
		t.Run(name, func(t *testing.T) {
			kv, err := chartutil.ParseKubeVersion(kubeVersion)
			if err != nil {
				t.Fatal(err)
			}
			l := lint.AllWithKubeVersion(chartDir(t), vals, namespace, kv)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %s", m)
				} else {
					t.Logf("lint: %s", m)
				}
			}
		})
	}
}

// valueMatrix is what TestLint and TestTemplateMatrix render.
func valueMatrix() map[string]map[string]any {
	return map[string]map[string]any{
		"defaults":         nil,
		"all-on":           allOn(),
		"no-policy":        {"admissionPolicy": map[string]any{"enabled": false}},
		"startup-taint":    {"startupTaint": map[string]any{"enabled": true}, "admissionPolicy": map[string]any{"enabled": false}},
		"no-namespace":     {"namespace": map[string]any{"create": false}},
		"other-clouds":     {"gcp": map[string]any{"workloadIdentityProvider": "projects/123/locations/global/workloadIdentityPools/p/providers/k", "projectID": "proj", "projectNumber": "123"}, "azure": map[string]any{"tenantID": "00000000-0000-0000-0000-000000000000", "identityHeader": "secret-header"}},
		"empty-lists":      {"tolerations": []any{}, "priorityClassName": "", "extraArgs": []any{}},
		"attest-off":       {"attest": map[string]any{"mode": "off"}},
		"attest-container": {"attest": map[string]any{"mode": "container"}},
		"monitoring-only":  {"podMonitor": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true}, "dashboards": map[string]any{"enabled": true}},
	}
}

// TestTemplateMatrix renders each case and checks what it must change.
func TestTemplateMatrix(t *testing.T) {
	dsKey := "DaemonSet/" + namespace + "/credbroker-agent"
	args := func(t *testing.T, objs map[string]object) []string {
		t.Helper()
		cs, _ := dig(objs[dsKey], "spec", "template", "spec", "containers").([]any)
		if len(cs) != 1 {
			t.Fatalf("containers = %v", cs)
		}
		var out []string
		for _, a := range cs[0].(map[string]any)["args"].([]any) {
			out = append(out, a.(string))
		}
		return out
	}
	monitoringKinds := []string{"ServiceMonitor", "PodMonitor", "PrometheusRule"}
	hasKind := func(objs map[string]object, kind string) bool {
		for _, o := range objs {
			if o["kind"] == kind {
				return true
			}
		}
		return false
	}

	t.Run("defaults", func(t *testing.T) {
		objs, _ := render(t, nil, monitoringAPI)
		for _, k := range append(monitoringKinds, "ConfigMap", "Service") {
			if hasKind(objs, k) {
				t.Errorf("a %s is rendered by default", k)
			}
		}
		if s := dig(objs[dsKey], "spec", "updateStrategy", "rollingUpdate", "maxSurge"); s != "1%" {
			t.Errorf("maxSurge = %v, want 1%%", s)
		}
	})
	t.Run("all-on", func(t *testing.T) {
		objs, notes := render(t, allOn(), monitoringAPI)
		for _, k := range append(monitoringKinds, "ConfigMap", "Service") {
			if !hasKind(objs, k) {
				t.Errorf("no %s rendered", k)
			}
		}
		if strings.Contains(notes, "WARNING") {
			t.Errorf("notes warn with the API present:\n%s", notes)
		}
		a := args(t, objs)
		for _, want := range []string{
			"--allowed-role-arn=arn:aws:iam::111122223333:role/team-*", "--allowed-role-arn=arn:aws:iam::111122223333:role/ops",
			"--role-annotation=example.com/role", "--require-authorization", "--allow-default-service-account",
			"--remove-startup-taint=example.com/not-ready", "--probe-listen=127.0.0.1:2713", "--metrics-listen=:2715",
			"--cache-size=2048", "--pod-fetch-interval=10s", "--log-format=text",
		} {
			if !slices.Contains(a, want) {
				t.Errorf("args %v lack %s", a, want)
			}
		}
		if a[len(a)-1] != "--log-level=debug" {
			t.Errorf("extra args are not last: %v", a)
		}
		c := dig(objs[dsKey], "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
		if c["image"] != "ghcr.io/credbroker/agent:v9.9.9@sha256:"+strings.Repeat("a", 64) {
			t.Errorf("image = %v", c["image"])
		}
		if p := dig(c, "readinessProbe", "httpGet", "port"); p != float64(2713) {
			t.Errorf("readiness probe port = %v", p)
		}
		vap := objs["ValidatingAdmissionPolicy//credbroker-agent-token-requests"]
		vars := dig(vap, "spec", "variables").([]any)
		if e := vars[0].(map[string]any)["expression"]; e != "['sts.amazonaws.com', '//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool-1/providers/prov-1', 'api://AzureADTokenExchange', 'example.com/other']" {
			t.Errorf("allowedAudiences = %v", e)
		}
		if e := vars[1].(map[string]any)["expression"]; e != "'https://svc.example.com/'" {
			t.Errorf("serviceAudiencePrefix = %v", e)
		}
		if !slices.Contains(a, "--record-events=false") {
			t.Errorf("args %v lack --record-events=false", a)
		}
		cm := objs["ConfigMap/monitoring/credbroker-agent-dashboard"]
		if dig(cm, "metadata", "labels", "grafana_dashboard") != "1" {
			t.Errorf("dashboard ConfigMap labels = %v", dig(cm, "metadata", "labels"))
		}
		rule := objs["PrometheusRule/"+namespace+"/credbroker-agent"]
		if groups, _ := dig(rule, "spec", "groups").([]any); len(groups) == 0 {
			t.Errorf("PrometheusRule has no groups: %v", rule)
		}
	})
	t.Run("monitoring-without-api", func(t *testing.T) {
		objs, notes := render(t, allOn())
		for _, k := range monitoringKinds {
			if hasKind(objs, k) {
				t.Errorf("a %s is rendered although %s is not served", k, monitoringAPI)
			}
			if !strings.Contains(notes, "WARNING: "+strings.ToLower(k[:1])+k[1:]+".enabled") {
				t.Errorf("notes do not say the %s was skipped:\n%s", k, notes)
			}
		}
	})
	t.Run("no-policy", func(t *testing.T) {
		objs, _ := render(t, valueMatrix()["no-policy"])
		if hasKind(objs, "ValidatingAdmissionPolicy") || hasKind(objs, "ValidatingAdmissionPolicyBinding") {
			t.Errorf("admission policy rendered with admissionPolicy.enabled=false: %v", keys(objs))
		}
	})
	t.Run("startup-taint-keeps-its-policy", func(t *testing.T) {
		objs, _ := render(t, valueMatrix()["startup-taint"])
		if _, ok := objs["ValidatingAdmissionPolicy//credbroker-agent-own-node"]; !ok {
			t.Errorf("own-node policy missing: %v", keys(objs))
		}
		if _, ok := objs["ValidatingAdmissionPolicy//credbroker-agent-token-requests"]; ok {
			t.Errorf("token policy rendered with admissionPolicy.enabled=false")
		}
	})
	t.Run("release-namespace", func(t *testing.T) {
		objs, _ := render(t, map[string]any{"namespace": map[string]any{"name": ""}})
		if _, ok := objs["DaemonSet/"+releaseNamespace+"/credbroker-agent"]; !ok {
			t.Errorf("with namespace.name empty, objects are not in the release namespace: %v", keys(objs))
		}
	})
	t.Run("no-namespace", func(t *testing.T) {
		objs, _ := render(t, valueMatrix()["no-namespace"])
		if hasKind(objs, "Namespace") {
			t.Error("Namespace rendered with namespace.create=false")
		}
	})
	t.Run("other-clouds", func(t *testing.T) {
		a := args(t, first(render(t, valueMatrix()["other-clouds"])))
		for _, want := range []string{
			"--gcp-workload-identity-provider=projects/123/locations/global/workloadIdentityPools/p/providers/k",
			"--gcp-project-id=proj", "--gcp-project-number=123",
			"--azure-tenant-id=00000000-0000-0000-0000-000000000000", "--azure-identity-header=secret-header",
		} {
			if !slices.Contains(a, want) {
				t.Errorf("args %v lack %s", a, want)
			}
		}
		d := args(t, first(render(t, nil)))
		for _, f := range d {
			if strings.HasPrefix(f, "--gcp-") || strings.HasPrefix(f, "--azure-") {
				t.Errorf("default args carry %s", f)
			}
		}
	})
	t.Run("empty-lists", func(t *testing.T) {
		objs, _ := render(t, valueMatrix()["empty-lists"])
		spec := dig(objs[dsKey], "spec", "template", "spec").(map[string]any)
		if _, ok := spec["tolerations"]; ok {
			t.Errorf("tolerations rendered: %v", spec["tolerations"])
		}
		if _, ok := spec["priorityClassName"]; ok {
			t.Errorf("priorityClassName rendered: %v", spec["priorityClassName"])
		}
	})
	t.Run("attest", func(t *testing.T) {
		// netns (the default) reads the node's /proc: hostPID and nothing
		// else; off needs neither.
		for _, c := range []struct {
			vals    map[string]any
			hostPID any
			arg     string
		}{
			{nil, true, "--attest=netns"},
			{valueMatrix()["attest-container"], true, "--attest=container"},
			{valueMatrix()["attest-off"], nil, "--attest=off"},
		} {
			objs, _ := render(t, c.vals)
			if h := dig(objs[dsKey], "spec", "template", "spec", "hostPID"); h != c.hostPID {
				t.Errorf("%v: hostPID = %v, want %v", c.vals, h, c.hostPID)
			}
			if a := args(t, objs); !slices.Contains(a, c.arg) {
				t.Errorf("%v: args %v lack %s", c.vals, a, c.arg)
			}
		}
		_, _, err := renderErr(t, map[string]any{"attest": map[string]any{"mode": "pod"}})
		if err == nil || !strings.Contains(err.Error(), "want netns, container or off") {
			t.Errorf("attest.mode=pod rendered: %v", err)
		}
		// container adds SYS_PTRACE, and only that.
		for _, c := range []struct {
			vals map[string]any
			caps []any
		}{
			{nil, []any{"NET_BIND_SERVICE"}},
			{valueMatrix()["attest-container"], []any{"NET_BIND_SERVICE", "SYS_PTRACE"}},
		} {
			objs, _ := render(t, c.vals)
			ctr := dig(objs[dsKey], "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
			if got := dig(ctr, "securityContext", "capabilities", "add"); !reflect.DeepEqual(got, c.caps) {
				t.Errorf("%v: capabilities.add = %v, want %v", c.vals, got, c.caps)
			}
		}
	})
	t.Run("bad-audience", func(t *testing.T) {
		_, _, err := renderErr(t, map[string]any{"admissionPolicy": map[string]any{"extraAudiences": []any{"a'b"}}})
		if err == nil || !strings.Contains(err.Error(), "CEL") {
			t.Errorf("an audience with a quote rendered: %v", err)
		}
	})
}

func first[A, B any](a A, _ B) A { return a }

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
