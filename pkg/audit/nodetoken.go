package audit

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
)

// IDDaemonSetTokens: a DaemonSet's ServiceAccount may mint tokens for every
// ServiceAccount of every namespace, where it could act as its node.
const IDDaemonSetTokens = "RBAC-DAEMONSET-CLUSTER-TOKENS"

// nodeRestrictionSince is the first Kubernetes minor version with
// constrained impersonation on by default (KEP-5284: alpha in 1.35, beta
// and on by default in 1.36).
const nodeRestrictionSince = 36

// tokenGrant is a ClusterRoleBinding that gives a ServiceAccount
// serviceaccounts/token create in every namespace.
type tokenGrant struct{ binding, role string }

// grantsClusterTokens reports whether rules allow create on
// serviceaccounts/token in the core group.
func grantsClusterTokens(rules []rbacv1.PolicyRule) bool {
	for _, r := range rules {
		if len(r.NonResourceURLs) > 0 {
			continue
		}
		if (slices.Contains(r.APIGroups, "") || slices.Contains(r.APIGroups, "*")) &&
			slices.ContainsFunc(r.Resources, func(s string) bool {
				return s == "serviceaccounts/token" || s == "serviceaccounts/*" || s == "*" || s == "*/token"
			}) &&
			(slices.Contains(r.Verbs, "create") || slices.Contains(r.Verbs, "*")) {
			return true
		}
	}
	return false
}

// clusterRole records whether a ClusterRole grants token create.
func (a *auditor) clusterRole(r *rbacv1.ClusterRole) {
	if grantsClusterTokens(r.Rules) {
		a.tokenRoles[r.Name] = struct{}{}
	}
}

// clusterTokenSubject records a ClusterRoleBinding of a token-minting
// ClusterRole to sa.
func (a *auditor) clusterTokenSubject(b bindingRef, ref rbacv1.RoleRef, sa saKey) {
	if b.kind != "ClusterRoleBinding" || ref.Kind != "ClusterRole" {
		return
	}
	if _, ok := a.tokenRoles[ref.Name]; !ok {
		return
	}
	a.tokenGrants[sa] = append(a.tokenGrants[sa], tokenGrant{binding: b.name, role: ref.Name})
}

// daemonSetTokenFindings reports the DaemonSets whose ServiceAccount holds
// a cluster-wide token grant, where the API server offers node restriction.
func (a *auditor) daemonSetTokenFindings() {
	if len(a.daemonSets) == 0 {
		return
	}
	if minor, ok := kubeMinor(a.cfg.ServerVersion); ok && minor < nodeRestrictionSince {
		a.note("the API server is %s: constrained impersonation (node-restricted DaemonSets) needs 1.%d or later, so DaemonSets holding serviceaccounts/token create cluster-wide were not reported", a.cfg.ServerVersion, nodeRestrictionSince)
		return
	}
	for ds, sas := range a.daemonSets {
		for sa := range sas {
			grants := a.tokenGrants[sa]
			if len(grants) == 0 {
				continue
			}
			details := make([]string, len(grants))
			fix := make([]string, len(grants))
			for i, g := range grants {
				details[i] = "ClusterRoleBinding " + g.binding + " → ClusterRole " + g.role
				fix[i] = "kubectl delete clusterrolebinding " + g.binding
			}
			f := Finding{
				ID: IDDaemonSetTokens, Severity: High, Object: ds, Subject: "ServiceAccount " + sa.String(),
				Message: fmt.Sprintf("runs as a ServiceAccount that may create serviceaccounts/token in every namespace (%s)", strings.Join(details, "; ")),
				Why: "whoever takes over one of its pods, on any node, can mint tokens for the ServiceAccount of every pod of the cluster " +
					"(and assume every cloud role that trusts one); acting as its own node through constrained impersonation " +
					"(impersonate:associated-node, Kubernetes 1.36+) it could mint them only for the pods bound to its node, as that node's kubelet can",
				Fix: "grant impersonate:associated-node on nodes (authentication.k8s.io) and impersonate-on:associated-node:create on serviceaccounts/token instead, " +
					"make the TokenRequests as system:node:<its node>, then: " + strings.Join(fix, " && "),
				Details: details,
			}
			if ds.Namespace == a.cfg.AgentNamespace && ds.Name == a.cfg.AgentDaemonSet {
				f.Fix = "remove the broad RBAC (the kustomize component deploy/daemonset/broad-rbac, or the chart's rbac.broad=true): " +
					"the agent then acts as its node (--node-restricted=auto; its log and credbroker_node_restricted say so): " + strings.Join(fix, " && ")
			}
			a.add(f)
		}
	}
}

// kubeMinor reads the minor version of a Kubernetes version string
// ("v1.37.2", "v1.35.0-eks-1", "1.36+").
func kubeMinor(v string) (int, bool) {
	v = strings.TrimPrefix(v, "v")
	major, rest, ok := strings.Cut(v, ".")
	if !ok || major != "1" {
		return 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end == 0 {
		return 0, false
	}
	if end > 0 {
		rest = rest[:end]
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}
