//go:build integration

// Package deploy_test checks deploy/daemonset against a real kube-apiserver:
// the rendered base passes a server-side dry run, the agent's RBAC grants
// what it needs and nothing else, the admission policy narrows its
// TokenRequests, and a surge rollout of two agent processes on one address
// loses no request of an SDK-like client.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/testenv"
)

const (
	agentUser    = "system:serviceaccount:" + harness.AgentNamespace + ":" + harness.AgentServiceAccount
	policyName   = "credbroker-agent-token-requests"
	stsAudience  = "sts.amazonaws.com"
	testNodeName = "node-1"
)

// render runs `kubectl kustomize deploy/daemonset` (with the components
// under deploy/daemonset named, e.g. "broad-rbac") and returns the YAML.
func render(t *testing.T, components ...string) []byte {
	t.Helper()
	testenv.RequireCommand(t, "kubectl")
	root := testenv.RepoRoot(t)
	dir := filepath.Join(root, "deploy/daemonset")
	if len(components) > 0 {
		// kustomize takes only relative paths to other directories.
		overlay := t.TempDir()
		base, err := filepath.Rel(overlay, dir)
		if err != nil {
			t.Fatal(err)
		}
		k := "resources: [" + base + "]\ncomponents:\n"
		for _, c := range components {
			k += "  - " + filepath.Join(base, c) + "\n"
		}
		if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
		dir = overlay
	}
	var stderr bytes.Buffer
	cmd := exec.Command("kubectl", "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/daemonset: %v: %s", err, stderr.String())
	}
	return out
}

// docs splits rendered YAML into documents keyed by "Kind/name".
func docs(t *testing.T, rendered []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	r := utilyaml.NewYAMLReader(bufioReader(rendered))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("splitting rendered YAML: %v", err)
		}
		var meta metav1.PartialObjectMetadata
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("parsing rendered document: %v", err)
		}
		if meta.Kind == "" {
			continue
		}
		out[meta.Kind+"/"+meta.Name] = doc
	}
	return out
}

// applyBase applies the rendered base (with components) for real
// (server-side) and returns a client that acts as the agent's
// ServiceAccount, with its kubeconfig path. The token is bound to nothing:
// the agent cannot act as a node, and needs the component broad-rbac.
func applyBase(t *testing.T, cp *harness.ControlPlane, components ...string) (kubernetes.Interface, string) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(cp.Dir, "base.yaml")
	if err := os.WriteFile(path, render(t, components...), 0o644); err != nil {
		t.Fatal(err)
	}
	// The Namespace first: kubectl sends the documents in order, but the
	// API server may not yet see a namespace created a moment earlier.
	if err := cp.EnsureNamespace(ctx, harness.AgentNamespace); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kubectl(ctx, "apply", "--server-side", "--field-manager=deploy-test", "-f", path); err != nil {
		t.Fatalf("applying the base: %v", err)
	}
	token, err := cp.ServiceAccountToken(ctx, harness.AgentNamespace, harness.AgentServiceAccount, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(cp.Dir, "agent.kubeconfig")
	if err := cp.WriteKubeconfig(kc, harness.AgentServiceAccount, token); err != nil {
		t.Fatal(err)
	}
	client, err := harness.KubeconfigClient(kc, "")
	if err != nil {
		t.Fatal(err)
	}
	return client, kc
}

// TestRenderedBase checks the rendered manifests for the properties the
// issue asks of them; a server would accept most violations silently.
func TestRenderedBase(t *testing.T) {
	d := docs(t, render(t))
	var kinds []string
	for k := range d {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	want := []string{
		"ClusterRole/credbroker-agent",
		"ClusterRole/credbroker-node-token-audiences",
		"ClusterRoleBinding/credbroker-agent",
		"ClusterRoleBinding/credbroker-node-token-audiences",
		"DaemonSet/credbroker-agent",
		"Namespace/credbroker-system",
		"ServiceAccount/credbroker-agent",
		"ValidatingAdmissionPolicy/" + policyName,
		"ValidatingAdmissionPolicyBinding/" + policyName,
	}
	if !slices.Equal(kinds, want) {
		t.Fatalf("rendered objects = %v, want %v", kinds, want)
	}

	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(d["ClusterRole/credbroker-agent"], &role); err != nil {
		t.Fatal(err)
	}
	// Node-restricted (docs/security.md): what it does as its node, and
	// the ServiceAccount watch as itself.
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"nodes"}, Verbs: []string{"impersonate:associated-node"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"impersonate-on:associated-node:list", "impersonate-on:associated-node:watch"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"impersonate-on:associated-node:create"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"impersonate-on:associated-node:create", "impersonate-on:associated-node:patch"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"list", "watch"}},
	}
	if len(role.Rules) != len(wantRules) {
		t.Errorf("ClusterRole has %d rules, want %d: %+v", len(role.Rules), len(wantRules), role.Rules)
	}
	for i := range min(len(role.Rules), len(wantRules)) {
		got, w := role.Rules[i], wantRules[i]
		if !slices.Equal(got.APIGroups, w.APIGroups) || !slices.Equal(got.Resources, w.Resources) ||
			!slices.Equal(got.Verbs, w.Verbs) || len(got.ResourceNames) != 0 || len(got.NonResourceURLs) != 0 {
			t.Errorf("ClusterRole rule %d = %+v, want %+v", i, got, w)
		}
	}

	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(d["DaemonSet/credbroker-agent"], &ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != harness.AgentServiceAccount {
		t.Errorf("pod spec: hostNetwork=%v priorityClassName=%q serviceAccountName=%q",
			spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint", spec.Tolerations)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxSurge == nil || us.RollingUpdate.MaxSurge.String() != "1%" ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "0" {
		t.Errorf("updateStrategy = %+v, want RollingUpdate with maxSurge 1%%, maxUnavailable 0", us)
	}
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one init container and one container, got %d and %d", len(spec.InitContainers), len(spec.Containers))
	}
	initC, agent := spec.InitContainers[0], spec.Containers[0]

	for _, c := range []corev1.Container{initC, agent} {
		// A declared port is a hostPort on a hostNetwork pod, and the
		// scheduler would keep the surge pod off the node.
		if len(c.Ports) != 0 {
			t.Errorf("container %s declares ports %+v", c.Name, c.Ports)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if c.Resources.Requests.Name(r, "").IsZero() || c.Resources.Limits.Name(r, "").IsZero() {
				t.Errorf("container %s lacks a %s request or limit", c.Name, r)
			}
		}
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			(sc.Privileged != nil && *sc.Privileged) {
			t.Errorf("container %s securityContext %+v: want drop ALL, no privilege escalation, read-only root, not privileged", c.Name, sc)
		}
	}
	if sc := agent.SecurityContext; sc != nil && sc.Capabilities != nil {
		if !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_BIND_SERVICE"}) {
			t.Errorf("agent adds capabilities %v, want only NET_BIND_SERVICE", sc.Capabilities.Add)
		}
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("agent securityContext %+v: want a non-root UID", sc)
		}
	}
	if sc := initC.SecurityContext; sc != nil && sc.Capabilities != nil && !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") {
		t.Errorf("init container adds %v, want NET_ADMIN among them", sc.Capabilities.Add)
	}
	if len(initC.Args) == 0 || initC.Args[0] != "init" {
		t.Errorf("init container args = %v, want `init ...`", initC.Args)
	}

	if len(agent.Args) == 0 || agent.Args[0] != "serve" || !slices.Contains(agent.Args, "--node-name=$(NODE_NAME)") {
		t.Errorf("agent args = %v, want `serve --node-name=$(NODE_NAME) ...`", agent.Args)
	}
	if !slices.ContainsFunc(agent.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Errorf("agent env %+v lacks NODE_NAME from spec.nodeName", agent.Env)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": agent.LivenessProbe, "readiness": agent.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.IntValue() != 2703 || p.HTTPGet.Host != "127.0.0.1" {
			t.Errorf("%s probe = %+v, want httpGet on 127.0.0.1:2703", name, p)
		}
	}
	if agent.LivenessProbe != nil && agent.LivenessProbe.HTTPGet != nil && agent.LivenessProbe.HTTPGet.Path != "/healthz" ||
		agent.ReadinessProbe != nil && agent.ReadinessProbe.HTTPGet != nil && agent.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probe paths: want /healthz and /readyz")
	}

	// The audience the agent asks for must be one the policy allows.
	var vap admissionregistrationv1.ValidatingAdmissionPolicy
	if err := yaml.Unmarshal(d["ValidatingAdmissionPolicy/"+policyName], &vap); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(vap.Spec.Variables, func(v admissionregistrationv1.Variable) bool { return v.Name == "allowedAudiences" })
	if i < 0 || vap.Spec.Variables[i].Expression != "['"+stsAudience+"']" || !slices.Contains(agent.Args, "--audience="+stsAudience) {
		t.Errorf("agent args %v and the policy's variables %+v disagree on the audience %s", agent.Args, vap.Spec.Variables, stsAudience)
	}
	// ... and one the nodes are granted (NodeRestriction's audience rule).
	var aud rbacv1.ClusterRole
	if err := yaml.Unmarshal(d["ClusterRole/credbroker-node-token-audiences"], &aud); err != nil {
		t.Fatal(err)
	}
	if len(aud.Rules) != 1 || !slices.Equal(aud.Rules[0].Resources, []string{stsAudience}) ||
		!slices.Equal(aud.Rules[0].Verbs, []string{"request-serviceaccounts-token-audience"}) {
		t.Errorf("audience grant %+v, want request-serviceaccounts-token-audience on %s", aud.Rules, stsAudience)
	}
}

// TestServerSideDryRun sends the whole rendered base to a real API server in
// dry-run mode: schemas, defaulting, validation of every object and the
// compilation of the policy's CEL expressions, with nothing persisted.
func TestServerSideDryRun(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	ctx := context.Background()
	path := filepath.Join(cp.Dir, "base.yaml")
	if err := os.WriteFile(path, render(t), 0o644); err != nil {
		t.Fatal(err)
	}
	// The namespace must exist for namespaced objects to pass admission; a
	// dry run cannot create it for the documents that follow.
	if err := cp.EnsureNamespace(ctx, harness.AgentNamespace); err != nil {
		t.Fatal(err)
	}
	out, err := cp.Kubectl(ctx, "apply", "--server-side", "--dry-run=server", "--field-manager=deploy-test", "-f", path)
	if err != nil {
		t.Fatalf("server-side dry run: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 9 {
		t.Errorf("dry run reported %d objects, want 9:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, "(server dry run)") {
			t.Errorf("dry run line %q", l)
		}
	}
	// Nothing was persisted.
	if _, err := cp.Client.AppsV1().DaemonSets(harness.AgentNamespace).Get(ctx, "credbroker-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DaemonSet after a dry run: %v, want NotFound", err)
	}
	// The policy's type check runs in kube-controller-manager, which this
	// control plane lacks; TestAdmissionPolicy exercises every expression.
}

// TestAgentRBAC asks the API server what the agent's identity may do.
func TestAgentRBAC(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	applyBase(t, cp)
	ctx := context.Background()
	if err := cp.EnsureNamespace(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		verb, resource, subresource string
		want                        bool
	}{
		// What it needs as itself, in every namespace.
		{"list", "serviceaccounts", "", true},
		{"watch", "serviceaccounts", "", true},
		// What it does only as its node (node-restricted; the Node
		// authorizer decides then), never as itself.
		{"get", "pods", "", false},
		{"list", "pods", "", false},
		{"watch", "pods", "", false},
		{"create", "serviceaccounts", "token", false},
		{"create", "events", "", false},
		// What it must not have.
		{"get", "secrets", "", false},
		{"list", "secrets", "", false},
		{"watch", "secrets", "", false},
		{"create", "pods", "exec", false},
		{"get", "pods", "exec", false},
		{"create", "pods", "attach", false},
		{"create", "pods", "portforward", false},
		{"get", "pods", "log", false},
		{"create", "pods", "eviction", false},
		{"create", "pods", "", false},
		{"update", "pods", "", false},
		{"patch", "pods", "", false},
		{"delete", "pods", "", false},
		{"deletecollection", "pods", "", false},
		{"update", "pods", "status", false},
		{"get", "serviceaccounts", "", false},
		{"create", "serviceaccounts", "", false},
		{"update", "serviceaccounts", "", false},
		{"patch", "serviceaccounts", "", false},
		{"delete", "serviceaccounts", "", false},
		{"get", "configmaps", "", false},
		{"get", "nodes", "", false},
		{"list", "nodes", "", false},
		{"impersonate", "serviceaccounts", "", false},
		{"impersonate", "users", "", false},
		{"create", "tokenreviews", "", false},
		{"create", "certificatesigningrequests", "", false},
		{"escalate", "clusterroles", "", false},
		{"bind", "clusterroles", "", false},
		{"create", "rolebindings", "", false},
		{"list", "daemonsets", "", false},
		{"update", "validatingadmissionpolicies", "", false},
		{"delete", "validatingadmissionpolicybindings", "", false},
	}
	for _, ns := range []string{"team", harness.AgentNamespace} {
		for _, tc := range tests {
			args := []string{"auth", "can-i", tc.verb, tc.resource, "-n", ns, "--as=" + agentUser}
			if tc.subresource != "" {
				args = append(args, "--subresource="+tc.subresource)
			}
			// can-i exits 1 for "no"; the last line of its output is the
			// answer either way (a warning about cluster-scoped resources
			// may come first).
			out, _ := cp.Kubectl(ctx, args...)
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			got := strings.TrimSpace(lines[len(lines)-1])
			want := "no"
			if tc.want {
				want = "yes"
			}
			if got != want {
				t.Errorf("can-i %s %s/%s -n %s as the agent = %q, want %s", tc.verb, tc.resource, tc.subresource, ns, got, want)
			}
		}
	}

	// The complete list of what it may do, minus what every authenticated
	// identity may do (system:basic-user, system:discovery): nothing beyond
	// the base's rules.
	out, err := cp.Kubectl(ctx, "auth", "can-i", "--list", "-n", "team", "--as="+agentUser, "--no-headers")
	if err != nil {
		t.Fatal(err)
	}
	everyone := map[string]bool{
		"selfsubjectreviews.authentication.k8s.io":      true,
		"selfsubjectaccessreviews.authorization.k8s.io": true,
		"selfsubjectrulesreviews.authorization.k8s.io":  true,
		// Public trust anchors, readable by every identity since 1.33.
		"clustertrustbundles.certificates.k8s.io": true,
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "[") {
			continue // non-resource URLs
		}
		if everyone[f[0]] {
			continue
		}
		// The verbs are the last bracketed list: "[get list watch]".
		got[f[0]] = line[strings.LastIndex(line, "["):]
	}
	wantList := map[string]string{
		"nodes.authentication.k8s.io": "[impersonate:associated-node]",
		"pods":                        "[impersonate-on:associated-node:list impersonate-on:associated-node:watch]",
		"serviceaccounts":             "[list watch]",
		"serviceaccounts/token":       "[impersonate-on:associated-node:create]",
		"events":                      "[impersonate-on:associated-node:create impersonate-on:associated-node:patch]",
	}
	if len(got) != len(wantList) {
		t.Errorf("the agent may act on %v, want exactly %v\n%s", got, wantList, out)
	}
	for r, verbs := range wantList {
		if got[r] != verbs {
			t.Errorf("the agent's verbs on %s = %q, want %q", r, got[r], verbs)
		}
	}
}

// TestAdmissionPolicy makes TokenRequests with the agent's own identity.
func TestAdmissionPolicy(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	agent, _ := applyBase(t, cp, "broad-rbac")
	ctx := context.Background()
	if _, err := cp.CreateServiceAccount(ctx, "team", "app", "arn:aws:iam::123456789012:role/app"); err != nil {
		t.Fatal(err)
	}
	pod, err := cp.CreatePod(ctx, harness.PodSpec{Namespace: "team", Name: "web", ServiceAccount: "app",
		NodeName: testNodeName, IP: netipMust("10.244.23.10")})
	if err != nil {
		t.Fatal(err)
	}
	podRef := func() *authenticationv1.BoundObjectReference {
		return &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	request := func(c kubernetes.Interface, auds []string, ref *authenticationv1.BoundObjectReference) error {
		return createToken(ctx, c, "team", "app", auds, ref)
	}

	// The policy takes effect once the API server's policy informer has it;
	// until then an unbound request from the agent succeeds.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := request(agent, []string{stsAudience}, nil)
		if deniedByPolicy(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy never took effect; last unbound request: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	tests := []struct {
		name  string
		auds  []string
		ref   *authenticationv1.BoundObjectReference
		admit bool
	}{
		{"pod-bound for sts.amazonaws.com", []string{stsAudience}, podRef(), true},
		{"unbound", []string{stsAudience}, nil, false},
		{"foreign audience", []string{"https://vault.example.com"}, podRef(), false},
		{"allowed and foreign audience", []string{stsAudience, "https://vault.example.com"}, podRef(), false},
		{"no audience (the API server's own)", nil, podRef(), false},
		{"bound to a Secret", []string{stsAudience}, &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: "s"}, false},
		{"bound to a pod by name only", []string{stsAudience}, &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := request(agent, tc.auds, tc.ref)
			switch {
			case tc.admit && err != nil:
				t.Errorf("TokenRequest as the agent: %v, want admitted", err)
			case !tc.admit && !deniedByPolicy(err):
				t.Errorf("TokenRequest as the agent: %v, want denied by %s", err, policyName)
			}
		})
	}

	// Other identities are not the policy's business.
	if err := request(cp.Client, []string{"https://vault.example.com"}, nil); err != nil {
		t.Errorf("unbound foreign-audience TokenRequest as the admin: %v, want admitted", err)
	}
}

// TestAdmissionPolicyAdmitsTheAgent runs the agent binary under the policy:
// its real TokenRequests pass, and a pod gets credentials.
func TestAdmissionPolicyAdmitsTheAgent(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	_, kc := applyBase(t, cp, "broad-rbac")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agentBin := testenv.AgentBinary(t)
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}
	sts := startAppRole(ctx, t, cp)
	listen, err := freeServiceAddr()
	if err != nil {
		t.Fatal(err)
	}
	a, err := harness.StartAgent(ctx, harness.AgentConfig{Binary: agentBin, Dir: cp.Dir, Kubeconfig: kc,
		NodeName: testNodeName, STSEndpoint: sts.URL(), Listen: listen})
	if err != nil {
		t.Fatalf("StartAgent: %v", err)
	}
	t.Cleanup(a.Stop)
	p := startAppPod(ctx, t, cp, "cbdpa", "10.244.23.20")
	status, body, err := p.Get(ctx, a.URL)
	if err != nil || status != 200 {
		t.Fatalf("credentials from the agent under the policy: %d %v\n%s\nagent log:\n%s", status, err, redact(body), a.LogTail(30))
	}
	if c := sts.Counts(); c.Issued != 1 {
		t.Errorf("STS issued %d credentials, want 1", c.Issued)
	}
}
