//go:build integration

package audit_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/credbroker/agent/pkg/audit"
)

// scale is the size of the cluster TestScale creates: the 10,000
// pods, 2,000 ServiceAccounts and 5,000 bindings (about 75 s, most of it
// creating them), or a fifth of that with AUDIT_SCALE=small for a quick
// run on a developer's machine.
type scale struct{ pods, serviceAccounts, bindings, namespaces int }

func scaleFromEnv() scale {
	if os.Getenv("AUDIT_SCALE") == "small" {
		return scale{pods: 2000, serviceAccounts: 400, bindings: 1000, namespaces: 20}
	}
	return scale{pods: 10000, serviceAccounts: 2000, bindings: 5000, namespaces: 20}
}

// TestScale audits a cluster of many objects and reports the audit's time,
// peak RSS and peak Go heap; memory must stay bounded by the page size,
// not grow with the pods.
func TestScale(t *testing.T) {
	c := startCluster(t)
	sc := scaleFromEnv()
	ctx := context.Background()

	// Creating is the slow part: the client limiter is lifted and 32
	// requests are kept in flight.
	cfg := rest.CopyConfig(c.cp.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	created := seedScale(ctx, t, client, sc)
	createTime := time.Since(start)
	t.Logf("created %d objects (%d pods, %d ServiceAccounts, %d RoleBindings, %d ReplicaSets) in %s",
		created, sc.pods, sc.serviceAccounts, sc.bindings, sc.pods/10, createTime.Round(time.Second))

	// The default page size, a smaller one, and one page for everything
	// (what an unpaged list costs the same program).
	heaps := map[int]int{}
	for _, pageSize := range []int{500, 100, 100000} {
		r := c.auditTraced(t, c.auditKC, "--page-size="+strconv.Itoa(pageSize), "--allowed-role-arn=arn:aws:iam::111122223333:role/*")
		if r.code == 2 {
			t.Fatalf("audit: %s", r.stderr)
		}
		if got := r.report.Scanned["pods"]; got != sc.pods {
			t.Errorf("scanned %d pods, want %d", got, sc.pods)
		}
		// deploy/audit's own ServiceAccount too.
		if got := r.report.Scanned["serviceaccounts"]; got != sc.serviceAccounts+1 {
			t.Errorf("scanned %d ServiceAccounts, want %d", got, sc.serviceAccounts+1)
		}
		counts := map[string]int{}
		for _, f := range r.report.Findings {
			counts[f.ID]++
		}
		// One ReplicaSet in 20 runs as default; one binding in 1,000 names it.
		want := map[string]int{audit.IDPodDefaultSA: sc.pods / 10 / 20, audit.IDDefaultSABinding: sc.bindings / 1000}
		for id, n := range want {
			if counts[id] != n {
				t.Errorf("%s: %d findings, want %d", id, counts[id], n)
			}
		}
		t.Logf("page size %d: audit of %d objects took %s, peak RSS %.1f MiB, peak Go heap %d MB; %d findings %v",
			pageSize, total(r.report.Scanned), r.elapsed.Round(10*time.Millisecond), mib(r.maxRSS), r.peakHeapMB, len(r.report.Findings), counts)
		// Bounded: the pods' objects are never all in memory (a 10,000-pod
		// list decoded at once is well over 100 MiB by itself).
		if limit := 120.0; pageSize <= 500 && mib(r.maxRSS) > limit {
			t.Errorf("peak RSS %.1f MiB is over %.0f MiB", mib(r.maxRSS), limit)
		}
		heaps[pageSize] = r.peakHeapMB
	}
	if heaps[500] >= heaps[100000] {
		t.Errorf("peak heap paged by 500 (%d MB) is not below unpaged (%d MB): memory does not depend on the page size", heaps[500], heaps[100000])
	}
}

// auditTraced is audit with the Go runtime's GC trace on, from which it
// reads the peak heap.
func (c *cluster) auditTraced(t *testing.T, kc string, args ...string) run {
	t.Helper()
	t.Setenv("GODEBUG", "gctrace=1")
	r := c.audit(t, kc, args...)
	// "gc 3 @0.1s 2%: ... 4->5->2 MB, ..." : heap at GC start, at GC end, live.
	for _, m := range gcLine.FindAllSubmatch(r.stderr, -1) {
		for _, g := range m[1:3] {
			if n, _ := strconv.Atoi(string(g)); n > r.peakHeapMB {
				r.peakHeapMB = n
			}
		}
	}
	return r
}

var gcLine = regexp.MustCompile(`(\d+)->(\d+)->\d+ MB`)

// seedScale creates sc's objects in namespaces scale-NN and returns how
// many it created.
func seedScale(ctx context.Context, t *testing.T, c kubernetes.Interface, sc scale) int {
	t.Helper()
	var n atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	do := func(f func() error) {
		g.Go(func() error {
			if err := f(); err != nil {
				return err
			}
			n.Add(1)
			return nil
		})
	}
	perNS := sc.serviceAccounts / sc.namespaces
	ns := func(i int) string { return fmt.Sprintf("scale-%02d", i%sc.namespaces) }
	saName := func(i int) string {
		if i == 0 {
			return "default"
		}
		return fmt.Sprintf("sa-%04d", i)
	}
	for i := range sc.namespaces {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns(i)}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "scale-view"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// ServiceAccounts: default and sa-0001… in each namespace; one in ten
	// names a role, every other one mounts no token.
	for i := range sc.serviceAccounts {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns(i), Name: saName(i / sc.namespaces)}}
		if i%10 == 5 {
			sa.Annotations = map[string]string{audit.DefaultRoleAnnotation: fmt.Sprintf("arn:aws:iam::111122223333:role/scale/%d", i)}
		}
		if i%2 == 1 {
			sa.AutomountServiceAccountToken = ptr.To(false)
		}
		do(func() error {
			_, err := c.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, sa, metav1.CreateOptions{})
			return err
		})
	}
	// RoleBindings: one ServiceAccount each, one in 1,000 the default one.
	for b := range sc.bindings {
		sa := 1 + (b/sc.namespaces)%(perNS-1)
		if b%1000 == 0 {
			sa = 0
		}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns(b), Name: fmt.Sprintf("rb-%05d", b)},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "scale-view"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: saName(sa), Namespace: ns(b)}}}
		do(func() error {
			_, err := c.RbacV1().RoleBindings(rb.Namespace).Create(ctx, rb, metav1.CreateOptions{})
			return err
		})
	}
	// ReplicaSets of ten pods each, owned by a Deployment; one in 20 on
	// the default ServiceAccount.
	nRS := sc.pods / 10
	rsSA := func(j int) string {
		if j%20 == 0 {
			return ""
		}
		return saName(1 + (j/sc.namespaces)%(perNS-1))
	}
	for j := range nRS {
		rs := &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns(j), Name: fmt.Sprintf("app-%04d-1", j),
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: fmt.Sprintf("app-%04d", j), UID: types.UID(fmt.Sprintf("d-%d", j)), Controller: ptr.To(true)}}},
			Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](0),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": strconv.Itoa(j)}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": strconv.Itoa(j)}}, Spec: podSpec(rsSA(j))}},
		}
		do(func() error {
			_, err := c.AppsV1().ReplicaSets(rs.Namespace).Create(ctx, rs, metav1.CreateOptions{})
			return err
		})
	}
	for i := range sc.pods {
		j := i / 10
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns(j), Name: fmt.Sprintf("app-%04d-1-%d", j, i%10), Labels: map[string]string{"app": strconv.Itoa(j)},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: fmt.Sprintf("app-%04d-1", j), UID: types.UID(fmt.Sprintf("rs-%d", j)), Controller: ptr.To(true)}}},
			Spec: podSpec(rsSA(j)),
		}
		do(func() error {
			_, err := c.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("creating the scale cluster: %v", err)
	}
	return int(n.Load())
}

// podSpec is a pod of typical size: two containers with a few variables,
// resources and a probe, the agent's endpoint in the environment.
func podSpec(sa string) corev1.PodSpec {
	ctr := func(name string, port int32) corev1.Container {
		return corev1.Container{Name: name, Image: "registry.example/team/" + name + ":v1.2.3",
			Env: []corev1.EnvVar{{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://169.254.170.23/v1/credentials"},
				{Name: "LOG_LEVEL", Value: "info"}, {Name: "PORT", Value: "8080"}},
			Ports:          []corev1.ContainerPort{{ContainerPort: port}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(port)}}},
		}
	}
	return corev1.PodSpec{ServiceAccountName: sa, NodeName: "node-1", Containers: []corev1.Container{ctr("app", 8080), ctr("sidecar", 9090)}}
}
