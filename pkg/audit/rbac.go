package audit

import (
	"fmt"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
)

const (
	groupAllServiceAccounts = "system:serviceaccounts"
	groupAuthenticated      = "system:authenticated"
	groupUnauthenticated    = "system:unauthenticated"
	saUserPrefix            = "system:serviceaccount:"
)

// bootstrapGroupBindings are the ClusterRoleBindings every API server
// creates (label kubernetes.io/bootstrapping=rbac-defaults) with the group
// subjects it gives them (checked on kube-apiserver v1.37): discovery, the
// caller's own access review and public version info, the issuer discovery
// document and the cluster trust bundles. They are not drift; anything else
// on such a binding is.
var bootstrapGroupBindings = map[string][]string{
	"system:basic-user":                       {groupAuthenticated},
	"system:discovery":                        {groupAuthenticated},
	"system:public-info-viewer":               {groupAuthenticated, groupUnauthenticated},
	"system:service-account-issuer-discovery": {groupAllServiceAccounts},
	"system:cluster-trust-bundle-discovery":   {groupAllServiceAccounts},
}

func isBootstrap(b bindingRef, labels map[string]string, ref rbacv1.RoleRef, group string) bool {
	if b.kind != "ClusterRoleBinding" || labels["kubernetes.io/bootstrapping"] != "rbac-defaults" ||
		ref.Kind != "ClusterRole" || ref.Name != b.name {
		return false
	}
	for _, g := range bootstrapGroupBindings[b.name] {
		if g == group {
			return true
		}
	}
	return false
}

// binding records what b grants and reports its grants to default
// ServiceAccounts and to the broad groups.
func (a *auditor) binding(b bindingRef, labels map[string]string, ref rbacv1.RoleRef, subjects []rbacv1.Subject) {
	role := roleKey{kind: ref.Kind, name: ref.Name}
	if ref.Kind == "Role" {
		role.namespace = b.namespace
	}
	g := grant{role: role, binding: b}
	// The API server's own bindings (system controllers' accounts) are
	// reconciled back by it on every start: no permission debt to pay there.
	g.bootstrap = labels["kubernetes.io/bootstrapping"] == "rbac-defaults"
	roleName := ref.Kind + " " + ref.Name
	for i, s := range subjects {
		switch {
		case s.Kind == rbacv1.ServiceAccountKind:
			// RBAC defaults a RoleBinding's ServiceAccount subject to the
			// binding's namespace; a ClusterRoleBinding's must name one.
			ns := s.Namespace
			if ns == "" {
				ns = b.namespace
			}
			a.saSubject(b, g, roleName, saKey{namespace: ns, name: s.Name}, subjects, i)
			a.clusterTokenSubject(b, ref, saKey{namespace: ns, name: s.Name})
		case s.Kind == rbacv1.UserKind && strings.HasPrefix(s.Name, saUserPrefix):
			// A User subject named like a ServiceAccount's username
			// grants to that ServiceAccount: RBAC compares user names.
			ns, name, ok := strings.Cut(strings.TrimPrefix(s.Name, saUserPrefix), ":")
			if ok && ns != "" && name != "" && !strings.Contains(name, ":") {
				a.saSubject(b, g, roleName, saKey{namespace: ns, name: name}, subjects, i)
				a.clusterTokenSubject(b, ref, saKey{namespace: ns, name: name})
			}
		case s.Kind == rbacv1.GroupKind:
			a.groupSubject(b, labels, ref, g, roleName, s.Name, subjects, i)
		}
	}
}

func (a *auditor) saSubject(b bindingRef, g grant, roleName string, sa saKey, subjects []rbacv1.Subject, i int) {
	if !a.inScope(sa.namespace) {
		return
	}
	a.bound[sa] = struct{}{}
	if a.cfg.AuditLog != nil && !g.bootstrap {
		a.grants[sa] = append(a.grants[sa], g)
	}
	if sa.name != "default" {
		return
	}
	where := "in namespace " + b.namespace
	if b.kind == "ClusterRoleBinding" {
		where = "in every namespace"
	}
	msg := fmt.Sprintf("grants %s %s to the default ServiceAccount of namespace %s", roleName, where, sa.namespace)
	if b.namespace != "" && sa.namespace != b.namespace {
		msg += " (another namespace than the binding's)"
	}
	a.add(Finding{
		ID: IDDefaultSABinding, Severity: High, Object: b.object(),
		Subject: "ServiceAccount " + sa.String(),
		Message: msg,
		Why: "every pod of the namespace that names no ServiceAccount runs as default, so the grant goes to all of them, " +
			"including any created later; only the workload that needs it should hold it, on a ServiceAccount of its own",
		Fix: "bind the workload's own ServiceAccount instead, then: " + removeSubject(b, subjects, i),
	})
}

// everyone are the groups that every caller of a kind is in: a grant to
// one reaches every pod's token, whatever its ServiceAccount.
var everyone = map[string]struct{ id, who, why string }{
	groupAuthenticated: {IDAuthenticated, "every authenticated identity",
		"every user, node and ServiceAccount token of the cluster is authenticated: any pod's token, leaked or not, carries this grant"},
	groupUnauthenticated: {IDUnauthenticated, "anonymous requests",
		"anyone who reaches the API server holds this grant without any credential"},
}

func (a *auditor) groupSubject(b bindingRef, labels map[string]string, ref rbacv1.RoleRef, g grant, roleName, group string, subjects []rbacv1.Subject, i int) {
	if isBootstrap(b, labels, ref, group) {
		return
	}
	// Cluster-wide groups matter to a namespace audit only where the
	// binding grants in that namespace (or everywhere).
	bindingInScope := b.kind == "ClusterRoleBinding" || a.inScope(b.namespace)
	where := "in namespace " + b.namespace
	if b.kind == "ClusterRoleBinding" {
		where = "in every namespace"
	}
	f := Finding{Object: b.object(), Subject: "Group " + group, Fix: removeSubject(b, subjects, i)}
	switch {
	case group == groupAllServiceAccounts:
		a.allSABound = true
		if a.cfg.AuditLog != nil {
			a.allSAGrant = append(a.allSAGrant, g)
		}
		if !bindingInScope {
			return
		}
		f.ID, f.Severity = IDServiceAccountGroup, High
		f.Message = fmt.Sprintf("grants %s %s to every ServiceAccount of every namespace, default ones included", roleName, where)
		f.Why = "the group holds every ServiceAccount, so every pod's token carries this grant, whatever its workload"
	case strings.HasPrefix(group, groupAllServiceAccounts+":"):
		ns := strings.TrimPrefix(group, groupAllServiceAccounts+":")
		if !a.inScope(ns) {
			return
		}
		a.nsGroupBound[ns] = struct{}{}
		if a.cfg.AuditLog != nil {
			a.nsGroupGrant[ns] = append(a.nsGroupGrant[ns], g)
		}
		f.ID, f.Severity = IDServiceAccountGroup, High
		f.Message = fmt.Sprintf("grants %s %s to every ServiceAccount of namespace %s, its default ServiceAccount included", roleName, where, ns)
		f.Why = "the group holds every ServiceAccount of the namespace, so every pod there, on default or not, carries this grant"
	case everyone[group].id != "":
		if !bindingInScope {
			return
		}
		e := everyone[group]
		f.ID, f.Severity = e.id, High
		f.Message = fmt.Sprintf("grants %s %s to %s", roleName, where, e.who)
		f.Why = e.why
	default:
		return
	}
	a.add(f)
}

// removeSubject is the command that removes subject i from b: a JSON patch
// that first tests the subject is still the one found (so that running the
// fixes of several findings in a row cannot remove the wrong one), or the
// deletion of b when it has no other subject.
func removeSubject(b bindingRef, subjects []rbacv1.Subject, i int) string {
	kind := strings.ToLower(b.kind)
	nsFlag := ""
	if b.namespace != "" {
		nsFlag = "-n " + b.namespace + " "
	}
	if len(subjects) == 1 {
		return fmt.Sprintf("kubectl %sdelete %s %s", nsFlag, kind, b.name)
	}
	return fmt.Sprintf(`kubectl %spatch %s %s --type=json -p '[{"op":"test","path":"/subjects/%d/name","value":"%s"},{"op":"remove","path":"/subjects/%d"}]'`,
		nsFlag, kind, b.name, i, subjects[i].Name, i)
}
