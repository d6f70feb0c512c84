package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
)

// objects is an in-memory Lister.
type objects struct {
	sas   []corev1.ServiceAccount
	pods  []corev1.Pod
	meta  map[string][]metav1.PartialObjectMetadata // by resource
	ds    []appsv1.DaemonSet
	roles []rbacv1.Role
	rbs   []rbacv1.RoleBinding
	crs   []rbacv1.ClusterRole
	crbs  []rbacv1.ClusterRoleBinding
}

func each[T any](items []T, ns func(*T) string, namespace string, fn func(*T) error) error {
	for i := range items {
		if namespace != "" && ns(&items[i]) != namespace {
			continue
		}
		if err := fn(&items[i]); err != nil {
			return err
		}
	}
	return nil
}

func (o *objects) ServiceAccounts(_ context.Context, ns string, fn func(*corev1.ServiceAccount) error) error {
	return each(o.sas, func(x *corev1.ServiceAccount) string { return x.Namespace }, ns, fn)
}
func (o *objects) Pods(_ context.Context, ns string, fn func(*corev1.Pod) error) error {
	return each(o.pods, func(x *corev1.Pod) string { return x.Namespace }, ns, fn)
}
func (o *objects) Metadata(_ context.Context, r schema.GroupVersionResource, ns string, fn func(*metav1.PartialObjectMetadata) error) error {
	return each(o.meta[r.Resource], func(x *metav1.PartialObjectMetadata) string { return x.Namespace }, ns, fn)
}
func (o *objects) DaemonSets(_ context.Context, ns, name string, fn func(*appsv1.DaemonSet) error) error {
	return each(o.ds, func(x *appsv1.DaemonSet) string { return x.Namespace + "/" + x.Name }, ns+"/"+name, fn)
}
func (o *objects) Roles(_ context.Context, ns string, fn func(*rbacv1.Role) error) error {
	return each(o.roles, func(x *rbacv1.Role) string { return x.Namespace }, ns, fn)
}
func (o *objects) RoleBindings(_ context.Context, ns string, fn func(*rbacv1.RoleBinding) error) error {
	return each(o.rbs, func(x *rbacv1.RoleBinding) string { return x.Namespace }, ns, fn)
}
func (o *objects) ClusterRoles(_ context.Context, fn func(*rbacv1.ClusterRole) error) error {
	return each(o.crs, func(*rbacv1.ClusterRole) string { return "" }, "", fn)
}
func (o *objects) ClusterRoleBindings(_ context.Context, fn func(*rbacv1.ClusterRoleBinding) error) error {
	return each(o.crbs, func(*rbacv1.ClusterRoleBinding) string { return "" }, "", fn)
}

func om(ns, name string) metav1.ObjectMeta { return metav1.ObjectMeta{Namespace: ns, Name: name} }

func controller(kind, name string) []metav1.OwnerReference {
	return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true)}}
}

func sa(ns, name string, annotations map[string]string, automount *bool) corev1.ServiceAccount {
	s := corev1.ServiceAccount{ObjectMeta: om(ns, name), AutomountServiceAccountToken: automount}
	s.Annotations = annotations
	return s
}

func pod(ns, name, sa, rs string, automount *bool, env ...corev1.EnvVar) corev1.Pod {
	p := corev1.Pod{ObjectMeta: om(ns, name), Spec: corev1.PodSpec{ServiceAccountName: sa, AutomountServiceAccountToken: automount,
		Containers: []corev1.Container{{Name: "c", Env: env}}}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	if rs != "" {
		p.OwnerReferences = controller("ReplicaSet", rs)
	}
	return p
}

func rs(ns, name, deploy string) metav1.PartialObjectMetadata {
	return metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, OwnerReferences: controller("Deployment", deploy)}}
}

var agentEnv = corev1.EnvVar{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://169.254.170.23/v1/credentials"}

// seeded is a small cluster with one misconfiguration of each kind and the
// decoys that must not be reported.
func seeded() *objects {
	role := func(arn string) map[string]string { return map[string]string{DefaultRoleAnnotation: arn} }
	return &objects{
		sas: []corev1.ServiceAccount{
			sa("team", "default", nil, nil),
			sa("team", "app", role("arn:aws:iam::111122223333:role/team/app"), ptr.To(false)), // well scoped
			sa("team", "shared", nil, ptr.To(false)),
			sa("team", "lonely", nil, nil), // no binding, token mounted
			sa("team", "ghost", role("arn:aws:iam::111122223333:role/team/ghost"), nil),
			sa("team", "typo", role("arn:aws:iam:111122223333:role/typo"), nil),
			sa("team", "outside", role("arn:aws:iam::999999999999:role/other"), nil),
			sa("team", "cloudy", role("arn:aws:iam::111122223333:role/team/cloudy"), nil),
			sa("other", "default", nil, nil),
			sa("other", "copy", role("arn:aws:iam::111122223333:role/team/app"), nil),
		},
		meta: map[string][]metav1.PartialObjectMetadata{"replicasets": {
			rs("team", "web-1", "web"), rs("team", "api-1", "api"), rs("team", "worker-1", "worker"), rs("team", "legacy-1", "legacy"),
			rs("other", "copy-1", "copy"),
		}},
		pods: []corev1.Pod{
			pod("team", "legacy-1-a", "", "legacy-1", nil), pod("team", "legacy-1-b", "default", "legacy-1", nil),
			pod("team", "web-1-a", "app", "web-1", nil, agentEnv), pod("team", "web-1-b", "app", "web-1", nil, agentEnv),
			pod("team", "api-1-a", "shared", "api-1", nil), pod("team", "worker-1-a", "shared", "worker-1", nil),
			pod("team", "lonely", "lonely", "", nil),
			pod("team", "cloudy", "cloudy", "", nil, agentEnv),
			pod("team", "typo", "typo", "", ptr.To(false)), pod("team", "outside", "outside", "", ptr.To(false)),
			pod("other", "copy-1-a", "copy", "copy-1", ptr.To(false)),
			func() corev1.Pod {
				p := pod("team", "done", "", "", nil)
				p.Status.Phase = corev1.PodSucceeded
				return p
			}(),
		},
		ds: []appsv1.DaemonSet{{ObjectMeta: om("credbroker-system", "credbroker-agent"), Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Args: []string{"serve", "--allowed-role-arn=arn:aws:iam::111122223333:role/team/*"}}}}}}}},
		roles: []rbacv1.Role{{ObjectMeta: om("team", "reader"), Rules: []rbacv1.PolicyRule{{Verbs: []string{"get", "list"}, APIGroups: []string{""}, Resources: []string{"pods"}}}}},
		crs:   []rbacv1.ClusterRole{{ObjectMeta: om("", "view"), Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{"*"}, Resources: []string{"*"}}}}},
		rbs: []rbacv1.RoleBinding{
			{ObjectMeta: om("team", "app-reader"), RoleRef: rbacv1.RoleRef{Kind: "Role", Name: "reader"},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "app", Namespace: "team"}, {Kind: "ServiceAccount", Name: "shared", Namespace: "team"}}},
			{ObjectMeta: om("team", "decoys"), RoleRef: rbacv1.RoleRef{Kind: "Role", Name: "reader"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: "default"}, {Kind: "Group", Name: "default"}}},
			{ObjectMeta: om("team", "to-default"), RoleRef: rbacv1.RoleRef{Kind: "Role", Name: "reader"},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default"}, {Kind: "User", Name: "alice"}}},
			{ObjectMeta: om("team", "to-other-default"), RoleRef: rbacv1.RoleRef{Kind: "Role", Name: "reader"},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: "other"}}},
			{ObjectMeta: om("team", "as-user"), RoleRef: rbacv1.RoleRef{Kind: "Role", Name: "reader"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: "system:serviceaccount:team:default"}}},
		},
		crbs: []rbacv1.ClusterRoleBinding{
			{ObjectMeta: metav1.ObjectMeta{Name: "system:discovery", Labels: map[string]string{"kubernetes.io/bootstrapping": "rbac-defaults"}},
				RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "system:discovery"}, Subjects: []rbacv1.Subject{{Kind: "Group", Name: groupAuthenticated}}},
			{ObjectMeta: om("", "team-view"), RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "view"},
				Subjects: []rbacv1.Subject{{Kind: "Group", Name: "system:serviceaccounts:team"}}},
			{ObjectMeta: om("", "everyone"), RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "view"},
				Subjects: []rbacv1.Subject{{Kind: "Group", Name: groupAuthenticated}, {Kind: "Group", Name: groupUnauthenticated}}},
		},
	}
}

func keys(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.ID+" "+f.Object.String())
	}
	return out
}

func TestSeededFindings(t *testing.T) {
	// Without the group binding on team, lonely's token is unused.
	o := seeded()
	o.crbs = slices.DeleteFunc(o.crbs, func(b rbacv1.ClusterRoleBinding) bool { return b.Name == "team-view" })
	r, err := Run(context.Background(), o, Config{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"RBAC-AUTHENTICATED ClusterRoleBinding/everyone",
		"RBAC-DEFAULT-SA RoleBinding/team/as-user",
		"RBAC-DEFAULT-SA RoleBinding/team/to-default",
		"RBAC-DEFAULT-SA RoleBinding/team/to-other-default",
		"RBAC-UNAUTHENTICATED ClusterRoleBinding/everyone",
		"CLOUD-IDENTITY-REUSED ServiceAccount/other/copy",
		"CLOUD-IDENTITY-REUSED ServiceAccount/team/app",
		"CLOUD-MALFORMED-IDENTITY ServiceAccount/team/typo",
		"CLOUD-ROLE-NOT-ALLOWED ServiceAccount/team/outside",
		"CLOUD-TOKEN-MOUNTED Pod/team/cloudy",
		"CLOUD-VARIABLES-MISSING Deployment/other/copy",
		"CLOUD-VARIABLES-MISSING Pod/team/outside",
		"CLOUD-VARIABLES-MISSING Pod/team/typo",
		"POD-DEFAULT-SA Deployment/team/legacy",
		"SA-SHARED ServiceAccount/team/shared",
		"CLOUD-UNUSED-IDENTITY ServiceAccount/team/ghost",
		"POD-UNUSED-TOKEN Pod/team/lonely",
	}
	got := keys(r)
	if !slices.Equal(got, want) {
		t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, f := range r.Findings {
		if f.Why == "" || f.Fix == "" || f.Message == "" {
			t.Errorf("%s %s lacks why, fix or message: %+v", f.ID, f.Object, f)
		}
		switch f.Object.Name {
		case "to-other-default":
			if f.Subject != "ServiceAccount other/default" {
				t.Errorf("to-other-default: subject %q, want the default ServiceAccount of namespace other", f.Subject)
			}
		case "to-default":
			if !strings.Contains(f.Fix, `"path":"/subjects/0"`) {
				t.Errorf("to-default: fix %q does not remove subject 0 only", f.Fix)
			}
		case "legacy":
			if f.Pods != 2 {
				t.Errorf("legacy: %d pods, want 2 (the finished pod is not counted)", f.Pods)
			}
		}
	}
	if !r.Fails(High) || r.Summary["high"] != 5 {
		t.Errorf("summary %v; Fails(High) = %v", r.Summary, r.Fails(High))
	}

	// The group binding gives every account of team a grant: no unused
	// token, but a finding of its own.
	r, err = Run(context.Background(), seeded(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	got = keys(r)
	if !slices.Contains(got, "RBAC-SA-GROUP ClusterRoleBinding/team-view") || slices.Contains(got, "POD-UNUSED-TOKEN Pod/team/lonely") {
		t.Errorf("with system:serviceaccounts:team bound: %s", strings.Join(got, "\n"))
	}
}

func TestNamespaceScope(t *testing.T) {
	r, err := Run(context.Background(), seeded(), Config{Namespace: "other", AllowedRoles: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	// team's bindings to other's default still count; team's own do not.
	want := []string{"RBAC-AUTHENTICATED ClusterRoleBinding/everyone", "RBAC-DEFAULT-SA RoleBinding/team/to-other-default",
		"RBAC-UNAUTHENTICATED ClusterRoleBinding/everyone", "CLOUD-VARIABLES-MISSING Deployment/other/copy"}
	if got := keys(r); !slices.Equal(got, want) {
		t.Errorf("findings in namespace other:\n%s", strings.Join(got, "\n"))
	}
}

func TestPermissionDebt(t *testing.T) {
	o := seeded()
	log := strings.Join([]string{
		`{"verb":"list","user":{"username":"system:serviceaccount:team:app"},"objectRef":{"resource":"pods","apiGroup":""},"responseStatus":{"code":200},"requestReceivedTimestamp":"2026-12-01T10:00:00Z"}`,
		`{"verb":"get","user":{"username":"system:serviceaccount:team:app"},"objectRef":{"resource":"secrets"},"responseStatus":{"code":403},"requestReceivedTimestamp":"2026-12-01T11:00:00Z"}`,
		`not json`,
		`{"verb":"get","user":{"username":"system:serviceaccount:team:shared"},"objectRef":{"resource":"configmaps"},"requestReceivedTimestamp":"2026-12-01T12:00:00Z"}`,
	}, "\n")
	r, err := Run(context.Background(), o, Config{AuditLog: strings.NewReader(log), AuditLogName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	var app, shared *Finding
	for i, f := range r.Findings {
		if f.ID == IDUnusedGrant && f.Object.Name == "app" {
			app = &r.Findings[i]
		}
		if f.ID == IDUnusedGrant && f.Object.Name == "shared" {
			shared = &r.Findings[i]
		}
	}
	if app == nil || shared == nil {
		t.Fatalf("no %s for team/app or team/shared: %s", IDUnusedGrant, strings.Join(keys(r), "\n"))
	}
	// app: Role reader (get, list pods) and, through system:serviceaccounts:team, view (get */*).
	if want := []string{"get * (*)", "get pods (core)"}; !slices.Equal(app.Details, want) {
		t.Errorf("app unused %q, want %q", app.Details, want)
	}
	if !strings.Contains(app.Message, "used 1 of the 3") || !strings.Contains(app.Message, "2026-12-01T10:00:00Z to 2026-12-01T12:00:00Z") {
		t.Errorf("app message %q", app.Message)
	}
	// shared's get configmaps is covered by view's get */*.
	if slices.Contains(shared.Details, "get * (*)") {
		t.Errorf("shared: get * counted unused although get configmaps was seen: %q", shared.Details)
	}
	if len(r.Notes) == 0 || !strings.Contains(strings.Join(r.Notes, " "), "1 lines were not JSON") {
		t.Errorf("notes %q", r.Notes)
	}
}

func TestReportOutputs(t *testing.T) {
	r, err := Run(context.Background(), seeded(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Findings) != len(r.Findings) || back.Findings[0].Severity != High || back.Scanned["pods"] != 12 {
		t.Errorf("JSON round trip: %d findings, first %v, scanned %v", len(back.Findings), back.Findings[0].Severity, back.Scanned)
	}
	var tb bytes.Buffer
	if err := r.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	if s := tb.String(); !strings.HasPrefix(s, "SEVERITY") || !strings.Contains(s, "fix: kubectl") || !strings.Contains(s, fmt.Sprintf("%d findings", len(r.Findings))) {
		t.Errorf("table:\n%s", s)
	}
	// Stable: a second run writes the same bytes.
	r2, _ := Run(context.Background(), seeded(), Config{})
	var js2 bytes.Buffer
	_ = r2.WriteJSON(&js2)
	if js.String() != js2.String() {
		t.Error("two runs wrote different JSON")
	}
}

func TestFlagValues(t *testing.T) {
	args := []string{"serve", "--allowed-role-arn=a,b", "--allowed-role-arn", "c", "-allowed-role-arn=d", "--role-annotation", "x/y", "--allowed-role-arnx=e"}
	if got := flagValues(args, "allowed-role-arn"); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Errorf("allowed-role-arn: %q", got)
	}
	if got := flagValues(args, "role-annotation"); !slices.Equal(got, []string{"x/y"}) {
		t.Errorf("role-annotation: %q", got)
	}
}

func TestValidateIdentities(t *testing.T) {
	for _, c := range []struct {
		id    identity
		ok    bool
		extra []string
	}{
		{identity{"aws role", "", "arn:aws:iam::111122223333:role/a/b"}, true, nil},
		// MinIO's roles, with the agent's --sts-extra-arn-partitions=minio.
		{identity{"aws role", "", "arn:minio:iam:::role/dummy-internal"}, false, nil},
		{identity{"aws role", "", "arn:minio:iam:::role/dummy-internal"}, true, []string{"minio"}},
		{identity{"aws role", "", "arn:minio:iam:::user/x"}, false, []string{"minio"}},
		{identity{"aws role", "", "arn:ceph:iam:::role/x"}, false, []string{"minio"}},
		{identity{"aws role", "", "arn:aws-cn:iam::111122223333:role/a"}, true, nil},
		{identity{"aws role", "", "arn:aws:iam::111122223333:user/a"}, false, nil},
		{identity{"aws role", "", "arn:aws:iam::1111:role/a"}, false, nil},
		{identity{"aws role", "", "my-role"}, false, nil},
		{identity{"aws role", "", "arn:aws:sts::111122223333:role/a"}, false, nil},
		{identity{"google service account", "", "app-runner@proj-1.iam.gserviceaccount.com"}, true, nil},
		{identity{"google service account", "", "app-runner@gmail.com"}, false, nil},
		{identity{"azure client", "", "8c3f1b7e-2d4a-4f6b-9e0a-1b2c3d4e5f60"}, true, nil},
		{identity{"azure client", "", "client-1"}, false, nil},
	} {
		if err := c.id.validate(c.extra); (err == nil) != c.ok {
			t.Errorf("%s %q: err %v, want ok=%v", c.id.kind, c.id.value, err, c.ok)
		}
	}
}

// forbidClusterWide refuses a cluster-wide RoleBinding list, as
// RBAC does for an identity bound in one namespace only.
type forbidClusterWide struct{ *objects }

func (f forbidClusterWide) RoleBindings(ctx context.Context, ns string, fn func(*rbacv1.RoleBinding) error) error {
	if ns == "" {
		return fmt.Errorf("listing rolebindings: %w", apierrors.NewForbidden(schema.GroupResource{Group: "rbac.authorization.k8s.io", Resource: "rolebindings"}, "", errors.New("no")))
	}
	return f.objects.RoleBindings(ctx, ns, fn)
}

func TestNamespaceWithoutClusterWideRoleBindings(t *testing.T) {
	r, err := Run(context.Background(), forbidClusterWide{seeded()}, Config{Namespace: "team"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Notes) == 0 || !strings.Contains(r.Notes[0], "rolebindings of other namespaces are not readable") {
		t.Errorf("notes %q", r.Notes)
	}
	if !slices.Contains(keys(r), "RBAC-DEFAULT-SA RoleBinding/team/to-default") {
		t.Errorf("the namespace's own bindings were not read: %s", strings.Join(keys(r), "\n"))
	}
	// Other lists still fail the audit.
	if _, err := Run(context.Background(), forbidClusterWide{seeded()}, Config{}); err == nil {
		t.Error("a refused cluster-wide list without --namespace did not fail the audit")
	}
}

func TestGroupsAndBootstrap(t *testing.T) {
	o := seeded()
	boot := func(name string, groups ...string) rbacv1.ClusterRoleBinding {
		b := rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/bootstrapping": "rbac-defaults"}},
			RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: name}}
		for _, g := range groups {
			b.Subjects = append(b.Subjects, rbacv1.Subject{Kind: "Group", Name: g})
		}
		return b
	}
	o.crbs = append(o.crbs,
		boot("system:basic-user", groupAuthenticated), boot("system:public-info-viewer", groupAuthenticated, groupUnauthenticated),
		boot("system:service-account-issuer-discovery", groupAllServiceAccounts),
		boot("system:cluster-trust-bundle-discovery", groupAllServiceAccounts),
		// Drift on a bootstrap binding is drift.
		boot("system:discovery", groupAuthenticated, groupUnauthenticated),
		// A label does not make a binding the API server's.
		func() rbacv1.ClusterRoleBinding {
			b := boot("system:discovery", groupAllServiceAccounts)
			b.Name = "lookalike"
			return b
		}(),
	)
	o.rbs = append(o.rbs, rbacv1.RoleBinding{ObjectMeta: om("other", "all-sas"), RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "view"},
		Subjects: []rbacv1.Subject{{Kind: "Group", Name: groupAllServiceAccounts}}})
	r, err := Run(context.Background(), o, Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := keys(r)
	for _, w := range []string{"RBAC-UNAUTHENTICATED ClusterRoleBinding/system:discovery", "RBAC-SA-GROUP ClusterRoleBinding/lookalike", "RBAC-SA-GROUP RoleBinding/other/all-sas"} {
		if !slices.Contains(got, w) {
			t.Errorf("missing %s", w)
		}
	}
	for _, g := range got {
		if strings.Contains(g, "ClusterRoleBinding/system:") && g != "RBAC-UNAUTHENTICATED ClusterRoleBinding/system:discovery" {
			t.Errorf("bootstrap binding reported: %s", g)
		}
	}
	// system:serviceaccounts is bound: every account has a binding.
	if slices.Contains(got, "POD-UNUSED-TOKEN Pod/team/lonely") {
		t.Error("POD-UNUSED-TOKEN although system:serviceaccounts is bound")
	}
}

// A MinIO role (arn:minio:iam:::role/ID) is malformed to an agent without
// --sts-extra-arn-partitions=minio, and well formed to one with it: the
// audit reads the partitions from the DaemonSet as it reads the patterns.
func TestExtraPartitionsFromTheDaemonSet(t *testing.T) {
	for _, c := range []struct {
		args      []string
		cfg       Config
		malformed bool
	}{
		{args: []string{"serve"}, malformed: true},
		{args: []string{"serve", "--sts-extra-arn-partitions", "minio"}, malformed: false},
		{args: []string{"serve", "--sts-extra-arn-partitions=minio"}, cfg: Config{ExtraPartitions: []string{}}, malformed: true},
		{args: []string{"serve"}, cfg: Config{ExtraPartitions: []string{"minio"}}, malformed: false},
	} {
		o := seeded()
		o.sas = append(o.sas, sa("team", "minio", map[string]string{DefaultRoleAnnotation: "arn:minio:iam:::role/dummy-internal"}, nil))
		o.pods = append(o.pods, pod("team", "minio", "minio", "", ptr.To(false)))
		o.ds[0].Spec.Template.Spec.Containers[0].Args = c.args
		r, err := Run(context.Background(), o, c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := slices.Contains(keys(r), IDMalformedIdentity+" ServiceAccount/team/minio")
		if got != c.malformed {
			t.Errorf("args %q, config partitions %q: malformed finding %v, want %v (findings %q)", c.args, c.cfg.ExtraPartitions, got, c.malformed, keys(r))
		}
	}
}
