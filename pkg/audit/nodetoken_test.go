package audit

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// tokenCluster: the agent's DaemonSet with the broad RBAC, another node
// agent with a wildcard grant, a node-restricted DaemonSet (impersonation
// verbs only) and a Deployment holding token create (not a DaemonSet: not
// this check's business).
func tokenCluster() *objects {
	dsPod := func(ns, name, sa, ds string) corev1.Pod {
		p := pod(ns, name, sa, "", ptr.To(false))
		p.OwnerReferences = controller("DaemonSet", ds)
		return p
	}
	crb := func(name, role string, subjects ...rbacv1.Subject) rbacv1.ClusterRoleBinding {
		return rbacv1.ClusterRoleBinding{ObjectMeta: om("", name), RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: role}, Subjects: subjects}
	}
	saSubject := func(ns, name string) rbacv1.Subject {
		return rbacv1.Subject{Kind: "ServiceAccount", Namespace: ns, Name: name}
	}
	return &objects{
		sas: []corev1.ServiceAccount{
			sa("credbroker-system", "credbroker-agent", nil, nil), sa("kube-system", "node-agent", nil, nil),
			sa("kube-system", "restricted", nil, nil), sa("team", "minter", nil, nil),
		},
		meta: map[string][]metav1.PartialObjectMetadata{"replicasets": {rs("team", "minter-1", "minter")}},
		pods: []corev1.Pod{
			dsPod("credbroker-system", "credbroker-agent-x1", "credbroker-agent", "credbroker-agent"),
			dsPod("credbroker-system", "credbroker-agent-x2", "credbroker-agent", "credbroker-agent"),
			dsPod("kube-system", "node-agent-x1", "node-agent", "node-agent"),
			dsPod("kube-system", "restricted-x1", "restricted", "restricted"),
			pod("team", "minter-1-a", "minter", "minter-1", ptr.To(false)),
		},
		crs: []rbacv1.ClusterRole{
			{ObjectMeta: om("", "credbroker-agent-broad"), Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}},
			}},
			{ObjectMeta: om("", "everything"), Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}}},
			{ObjectMeta: om("", "credbroker-agent"), Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"nodes"}, Verbs: []string{"impersonate:associated-node"}},
				{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"impersonate-on:associated-node:create"}},
			}},
		},
		crbs: []rbacv1.ClusterRoleBinding{
			crb("credbroker-agent-broad", "credbroker-agent-broad", saSubject("credbroker-system", "credbroker-agent")),
			crb("node-agent-admin", "everything", saSubject("kube-system", "node-agent")),
			crb("restricted", "credbroker-agent", saSubject("kube-system", "restricted")),
			crb("minter", "credbroker-agent-broad", saSubject("team", "minter")),
		},
	}
}

func TestDaemonSetClusterTokens(t *testing.T) {
	r, err := Run(context.Background(), tokenCluster(), Config{ServerVersion: "v1.37.2"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Finding{}
	for _, f := range r.Findings {
		if f.ID == IDDaemonSetTokens {
			got[f.Object.String()] = f
		}
	}
	if len(got) != 2 {
		t.Fatalf("findings %v, want the agent's and node-agent's DaemonSets only", got)
	}
	agent, ok := got["DaemonSet/credbroker-system/credbroker-agent"]
	if !ok {
		t.Fatalf("no finding for the agent's broad RBAC: %v", got)
	}
	if agent.Severity != High || agent.Subject != "ServiceAccount credbroker-system/credbroker-agent" ||
		!strings.Contains(agent.Fix, "broad-rbac") || !strings.Contains(agent.Fix, "kubectl delete clusterrolebinding credbroker-agent-broad") {
		t.Errorf("agent finding %+v", agent)
	}
	other := got["DaemonSet/kube-system/node-agent"]
	if !strings.Contains(other.Fix, "impersonate:associated-node") || !strings.Contains(other.Fix, "kubectl delete clusterrolebinding node-agent-admin") {
		t.Errorf("node-agent fix %q", other.Fix)
	}
}

// Before 1.36 a DaemonSet cannot act as its node: the check says so
// instead of reporting what cannot be fixed.
func TestDaemonSetClusterTokensOldAPIServer(t *testing.T) {
	r, err := Run(context.Background(), tokenCluster(), Config{ServerVersion: "v1.35.4-eks-1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Findings {
		if f.ID == IDDaemonSetTokens {
			t.Errorf("finding %+v on a 1.35 API server", f)
		}
	}
	if !strings.Contains(strings.Join(r.Notes, "\n"), "needs 1.36 or later") {
		t.Errorf("notes %q do not say why the check was skipped", r.Notes)
	}
}

func TestKubeMinor(t *testing.T) {
	for v, want := range map[string]int{"v1.37.2": 37, "1.36+": 36, "v1.35.0-eks-1": 35, "v2.0.0": -1, "": -1, "v1.x": -1} {
		got, ok := kubeMinor(v)
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("kubeMinor(%q) = %d, want %d", v, got, want)
		}
	}
}
