package audit

import (
	"fmt"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// auditor holds what the audit keeps between lists: a few facts per
// ServiceAccount, binding and owner, and the findings so far. It is used
// by one goroutine.
type auditor struct {
	cfg Config
	// agentClouds are the clouds the agent's DaemonSet turns on; nil when
	// it was not read (every cloud is then checked).
	agentClouds  map[string]bool
	patternsFrom string // where AllowedRoles came from, for messages
	report       Report

	sas map[saKey]*saInfo
	// bound are the ServiceAccounts some binding names (they need not
	// exist); nsGroupBound the namespaces whose group
	// system:serviceaccounts:<ns> is bound; allSABound whether
	// system:serviceaccounts is.
	bound        map[saKey]struct{}
	nsGroupBound map[string]struct{}
	allSABound   bool
	// grants are the roles bound to each ServiceAccount (directly) and to
	// the groups, for the permission-debt check; rules holds the roles'
	// rules, only read when there is an audit log.
	grants       map[saKey][]grant
	nsGroupGrant map[string][]grant
	allSAGrant   []grant
	rules        map[roleKey][]rule
	// owners maps a ReplicaSet or Job to its controller (Deployment,
	// CronJob, or anything else that controls it).
	owners map[Object]Object
	// tokenRoles are the ClusterRoles granting serviceaccounts/token
	// create; tokenGrants the ServiceAccounts bound to them cluster-wide;
	// daemonSets the ServiceAccounts each DaemonSet's pods run as.
	tokenRoles  map[string]struct{}
	tokenGrants map[saKey][]tokenGrant
	daemonSets  map[Object]map[saKey]struct{}
	// agg holds the per-workload findings, which many pods add to.
	agg      map[aggKey]*Finding
	aggOrder []aggKey
}

type saKey struct{ namespace, name string }

func (k saKey) String() string { return k.namespace + "/" + k.name }

type saInfo struct {
	automount *bool
	// Cloud identities named by annotations; empty when not set.
	role, gcp, azure string
	pods             int
	workloads        map[Object]struct{}
}

type roleKey struct{ kind, namespace, name string }

type bindingRef struct{ kind, namespace, name string }

func (b bindingRef) object() Object {
	return Object{Kind: b.kind, Namespace: b.namespace, Name: b.name}
}

type grant struct {
	role      roleKey
	binding   bindingRef
	bootstrap bool
}

type aggKey struct {
	id       string
	workload Object
}

func newAuditor(cfg Config) *auditor {
	return &auditor{
		cfg:          cfg,
		report:       Report{Findings: []Finding{}, Scanned: map[string]int{}},
		sas:          map[saKey]*saInfo{},
		bound:        map[saKey]struct{}{},
		nsGroupBound: map[string]struct{}{},
		grants:       map[saKey][]grant{},
		nsGroupGrant: map[string][]grant{},
		rules:        map[roleKey][]rule{},
		owners:       map[Object]Object{},
		agg:          map[aggKey]*Finding{},
		tokenRoles:   map[string]struct{}{},
		tokenGrants:  map[saKey][]tokenGrant{},
		daemonSets:   map[Object]map[saKey]struct{}{},
	}
}

func (a *auditor) note(format string, args ...any) {
	a.report.Notes = append(a.report.Notes, fmt.Sprintf(format, args...))
}

func (a *auditor) add(f Finding) { a.report.Findings = append(a.report.Findings, f) }

// addPod counts pod into the finding id of its workload, creating it with
// newFinding on the first pod.
func (a *auditor) addPod(id string, workload Object, pod string, newFinding func() Finding) {
	k := aggKey{id: id, workload: workload}
	f, ok := a.agg[k]
	if !ok {
		nf := newFinding()
		f = &nf
		f.Example = pod
		a.agg[k] = f
		a.aggOrder = append(a.aggOrder, k)
	}
	f.Pods++
}

// flush moves the per-workload findings into the report.
func (a *auditor) flush() {
	for _, k := range a.aggOrder {
		a.add(*a.agg[k])
	}
	a.agg, a.aggOrder = nil, nil
}

func (a *auditor) inScope(namespace string) bool {
	return a.cfg.Namespace == "" || a.cfg.Namespace == namespace
}

// owner records the controller of a ReplicaSet or Job.
func (a *auditor) owner(namespace, kind, name string, refs []metav1.OwnerReference) {
	for _, r := range refs {
		if r.Controller != nil && *r.Controller {
			a.owners[Object{Kind: kind, Namespace: namespace, Name: name}] = Object{Kind: r.Kind, Namespace: namespace, Name: r.Name}
			return
		}
	}
}

// workloadOf walks a pod's controller references up to the object a
// person edits: pod → ReplicaSet → Deployment, pod → Job → CronJob,
// pod → StatefulSet or DaemonSet. A pod without a controller is its own
// workload.
func (a *auditor) workloadOf(namespace, name string, refs []metav1.OwnerReference) Object {
	cur := Object{Kind: "Pod", Namespace: namespace, Name: name}
	for _, r := range refs {
		if r.Controller != nil && *r.Controller {
			cur = Object{Kind: r.Kind, Namespace: namespace, Name: r.Name}
			break
		}
	}
	// Two steps at most (ReplicaSet → Deployment); the bound keeps a
	// cycle of owner references from looping.
	for range 4 {
		up, ok := a.owners[cur]
		if !ok {
			break
		}
		cur = up
	}
	return cur
}

func splitComma(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// rule is one RBAC rule, reduced to what the permission-debt check reads.
type rule struct {
	verbs, groups, resources []string
}

func compactRules(rs []rbacv1.PolicyRule) []rule {
	out := make([]rule, 0, len(rs))
	for _, r := range rs {
		if len(r.Resources) == 0 { // nonResourceURLs: the audit log's paths are not checked
			continue
		}
		out = append(out, rule{verbs: r.Verbs, groups: r.APIGroups, resources: r.Resources})
	}
	return out
}
