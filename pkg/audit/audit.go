// Package audit finds the identity misconfigurations of a live cluster:
// what the agent's design (one ServiceAccount per workload, nothing for
// `default`, no mounted token, short-lived cloud credentials) would have
// prevented. It only reads, through list requests a page at a time, and
// keeps a few small facts per ServiceAccount, binding and workload, never
// the objects themselves, so that memory stays bounded by the page size
// plus those facts (docs/audit.md has the figures on a 10,000-pod cluster).
//
// Each check and its finding IDs are documented in docs/audit.md; the IDs
// are constants here, and the JSON form of a Report is stable for CI.
package audit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Finding IDs. docs/audit.md has a section per ID.
const (
	IDDefaultSABinding    = "RBAC-DEFAULT-SA"
	IDServiceAccountGroup = "RBAC-SA-GROUP"
	IDAuthenticated       = "RBAC-AUTHENTICATED"
	IDUnauthenticated     = "RBAC-UNAUTHENTICATED"
	IDUnusedGrant         = "RBAC-UNUSED-GRANT"
	IDPodDefaultSA        = "POD-DEFAULT-SA"
	IDUnusedToken         = "POD-UNUSED-TOKEN"
	IDSharedSA            = "SA-SHARED"
	IDUnusedIdentity      = "CLOUD-UNUSED-IDENTITY"
	IDRoleNotAllowed      = "CLOUD-ROLE-NOT-ALLOWED"
	IDMalformedIdentity   = "CLOUD-MALFORMED-IDENTITY"
	IDReusedIdentity      = "CLOUD-IDENTITY-REUSED"
	IDCloudTokenMounted   = "CLOUD-TOKEN-MOUNTED"
	// IDDaemonSetTokens is in nodetoken.go.
)

// Annotations naming a ServiceAccount's cloud identity.
const (
	DefaultRoleAnnotation = "eks.amazonaws.com/role-arn"
	GCPAnnotation         = "iam.gke.io/gcp-service-account"
	AzureAnnotation       = "azure.workload.identity/client-id"
)

// Lister reads the cluster a page at a time, calling each for every
// object. namespace "" means every namespace. *Client implements it; the
// objects passed to each are only valid during the call.
type Lister interface {
	ServiceAccounts(ctx context.Context, namespace string, each func(*corev1.ServiceAccount) error) error
	Pods(ctx context.Context, namespace string, each func(*corev1.Pod) error) error
	// Metadata lists objects' metadata only (ReplicaSets and Jobs, for
	// their owners).
	Metadata(ctx context.Context, resource schema.GroupVersionResource, namespace string, each func(*metav1.PartialObjectMetadata) error) error
	DaemonSets(ctx context.Context, namespace, name string, each func(*appsv1.DaemonSet) error) error
	Roles(ctx context.Context, namespace string, each func(*rbacv1.Role) error) error
	RoleBindings(ctx context.Context, namespace string, each func(*rbacv1.RoleBinding) error) error
	ClusterRoles(ctx context.Context, each func(*rbacv1.ClusterRole) error) error
	ClusterRoleBindings(ctx context.Context, each func(*rbacv1.ClusterRoleBinding) error) error
}

// The resources read as metadata only.
var (
	ReplicaSets = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}
	Jobs        = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
)

// Config says what to audit.
type Config struct {
	// Namespace limits the audit to one namespace; "" audits all. Cluster
	// bindings are still read, for what they grant in it.
	Namespace string
	// AllowedRoles are the agent's --allowed-role-arn patterns. When nil,
	// they are read from the agent's DaemonSet (AgentNamespace,
	// AgentDaemonSet); an empty, non-nil slice means every role is allowed.
	AllowedRoles []string
	// AgentNamespace and AgentDaemonSet name the agent's DaemonSet.
	// Defaults: credbroker-system, credbroker-agent.
	AgentNamespace, AgentDaemonSet string
	// RoleAnnotation is the agent's --role-annotation. Default
	// eks.amazonaws.com/role-arn (or what the DaemonSet says).
	RoleAnnotation string
	// ExtraPartitions are the agent's --sts-extra-arn-partitions: role
	// ARNs in them (MinIO's arn:minio:iam:::role/ID) are well formed.
	// Nil: read from the agent's DaemonSet.
	ExtraPartitions []string
	// AuditLog, when set, is a Kubernetes audit log (JSON lines) for the
	// permission-debt check; AuditLogName names it in messages.
	AuditLog     io.Reader
	AuditLogName string
	// ServerVersion is the API server's version ("v1.37.2"), for the
	// checks that depend on it; empty: unknown, checked as if recent.
	ServerVersion string
	// Logger gets progress at debug level; nil discards.
	Logger *slog.Logger
}

// Run audits the cluster l reads and returns the findings, sorted.
func Run(ctx context.Context, l Lister, cfg Config) (*Report, error) {
	cfg.AgentNamespace = cmp.Or(cfg.AgentNamespace, "credbroker-system")
	cfg.AgentDaemonSet = cmp.Or(cfg.AgentDaemonSet, "credbroker-agent")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := newAuditor(cfg)
	if err := a.run(ctx, l); err != nil {
		return nil, err
	}
	a.report.sort()
	return &a.report, nil
}

func (a *auditor) run(ctx context.Context, l Lister) error {
	ns := a.cfg.Namespace
	log := a.cfg.Logger
	if err := a.agentSettings(ctx, l); err != nil {
		return err
	}
	// ServiceAccounts first: bindings and pods are judged against them.
	if err := l.ServiceAccounts(ctx, ns, func(sa *corev1.ServiceAccount) error {
		a.report.Scanned["serviceaccounts"]++
		a.serviceAccount(sa)
		return nil
	}); err != nil {
		return err
	}
	log.DebugContext(ctx, "listed", "kind", "serviceaccounts", "count", a.report.Scanned["serviceaccounts"])
	// ClusterRoles: which grant serviceaccounts/token create (the
	// DaemonSet check) and, with an audit log, their rules, to say which
	// grants went unused.
	if err := l.ClusterRoles(ctx, func(r *rbacv1.ClusterRole) error {
		a.report.Scanned["clusterroles"]++
		a.clusterRole(r)
		if a.cfg.AuditLog != nil {
			a.rules[roleKey{kind: "ClusterRole", name: r.Name}] = compactRules(r.Rules)
		}
		return nil
	}); err != nil {
		return err
	}
	if a.cfg.AuditLog != nil {
		if err := l.Roles(ctx, ns, func(r *rbacv1.Role) error {
			a.report.Scanned["roles"]++
			a.rules[roleKey{kind: "Role", namespace: r.Namespace, name: r.Name}] = compactRules(r.Rules)
			return nil
		}); err != nil {
			return err
		}
	}
	if err := l.ClusterRoleBindings(ctx, func(b *rbacv1.ClusterRoleBinding) error {
		a.report.Scanned["clusterrolebindings"]++
		a.binding(bindingRef{kind: "ClusterRoleBinding", name: b.Name}, b.Labels, b.RoleRef, b.Subjects)
		return nil
	}); err != nil {
		return err
	}
	// RoleBindings of other namespaces can grant to this namespace's
	// ServiceAccounts, so they are read cluster-wide when allowed.
	err := l.RoleBindings(ctx, metav1.NamespaceAll, func(b *rbacv1.RoleBinding) error {
		a.report.Scanned["rolebindings"]++
		a.binding(bindingRef{kind: "RoleBinding", namespace: b.Namespace, name: b.Name}, b.Labels, b.RoleRef, b.Subjects)
		return nil
	})
	if ns != "" && apierrors.IsForbidden(err) {
		a.note("rolebindings of other namespaces are not readable; bindings there that grant to namespace %s were not seen", ns)
		a.report.Scanned["rolebindings"] = 0
		err = l.RoleBindings(ctx, ns, func(b *rbacv1.RoleBinding) error {
			a.report.Scanned["rolebindings"]++
			a.binding(bindingRef{kind: "RoleBinding", namespace: b.Namespace, name: b.Name}, b.Labels, b.RoleRef, b.Subjects)
			return nil
		})
	}
	if err != nil {
		return err
	}
	// Owners of pods' owners: Deployments own ReplicaSets, CronJobs own Jobs.
	for _, o := range []struct {
		kind string
		gvr  schema.GroupVersionResource
	}{{"ReplicaSet", ReplicaSets}, {"Job", Jobs}} {
		if err := l.Metadata(ctx, o.gvr, ns, func(m *metav1.PartialObjectMetadata) error {
			a.report.Scanned[o.gvr.Resource]++
			a.owner(m.Namespace, o.kind, m.Name, m.OwnerReferences)
			return nil
		}); err != nil {
			return err
		}
	}
	if err := l.Pods(ctx, ns, func(p *corev1.Pod) error {
		a.report.Scanned["pods"]++
		a.pod(p)
		return nil
	}); err != nil {
		return err
	}
	log.DebugContext(ctx, "listed", "kind", "pods", "count", a.report.Scanned["pods"])
	a.serviceAccountFindings()
	a.daemonSetTokenFindings()
	if a.cfg.AuditLog != nil {
		if err := a.permissionDebt(ctx); err != nil {
			return err
		}
	}
	a.flush()
	return nil
}

// agentSettings reads --allowed-role-arn, --role-annotation and
// --sts-extra-arn-partitions from the agent's DaemonSet unless the caller
// gave them.
func (a *auditor) agentSettings(ctx context.Context, l Lister) error {
	if a.cfg.AllowedRoles != nil && a.cfg.RoleAnnotation != "" && a.cfg.ExtraPartitions != nil {
		return nil
	}
	found := false
	var roles, partitions []string
	annotation := ""
	err := l.DaemonSets(ctx, a.cfg.AgentNamespace, a.cfg.AgentDaemonSet, func(ds *appsv1.DaemonSet) error {
		found = true
		for _, c := range ds.Spec.Template.Spec.Containers {
			args := append(append([]string(nil), c.Command...), c.Args...)
			if !hasServe(args) {
				continue
			}
			a.cloudsFromArgs(args)
			roles = append(roles, flagValues(args, "allowed-role-arn")...)
			partitions = append(partitions, flagValues(args, "sts-extra-arn-partitions")...)
			if v := flagValues(args, "role-annotation"); len(v) > 0 {
				annotation = v[len(v)-1]
			}
		}
		return nil
	})
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsNotFound(err):
		a.note("the agent's DaemonSet %s/%s is not readable (%v); pass --allowed-role-arn to check roles against its patterns", a.cfg.AgentNamespace, a.cfg.AgentDaemonSet, errors.Unwrap(err))
	case err != nil:
		return err
	case !found && a.cfg.AllowedRoles == nil:
		a.note("no agent DaemonSet %s/%s: roles were not checked against --allowed-role-arn patterns (pass the flag)", a.cfg.AgentNamespace, a.cfg.AgentDaemonSet)
	}
	if found && a.cfg.AllowedRoles == nil {
		a.cfg.AllowedRoles = roles
		a.patternsFrom = fmt.Sprintf("DaemonSet %s/%s", a.cfg.AgentNamespace, a.cfg.AgentDaemonSet)
	}
	if a.cfg.RoleAnnotation == "" {
		a.cfg.RoleAnnotation = annotation
	}
	if a.cfg.ExtraPartitions == nil {
		a.cfg.ExtraPartitions = partitions
	}
	if a.cfg.RoleAnnotation == "" {
		a.cfg.RoleAnnotation = DefaultRoleAnnotation
	}
	return nil
}

func hasServe(args []string) bool {
	for _, s := range args {
		if s == "serve" {
			return true
		}
	}
	return false
}

// flagValues returns the values of --name (or -name) in args, in both the
// "--name=v" and "--name v" forms, comma lists split as the agent does.
func flagValues(args []string, name string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		s := args[i]
		var v string
		switch {
		case s == "--"+name || s == "-"+name:
			if i+1 >= len(args) {
				continue
			}
			i++
			v = args[i]
		case len(s) > len(name)+3 && s[:len(name)+3] == "--"+name+"=":
			v = s[len(name)+3:]
		case len(s) > len(name)+2 && s[:len(name)+2] == "-"+name+"=":
			v = s[len(name)+2:]
		default:
			continue
		}
		out = append(out, splitComma(v)...)
	}
	return out
}
