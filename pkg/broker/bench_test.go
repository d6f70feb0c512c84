package broker

import (
	"context"
	"fmt"
	"net/netip"
	goruntime "runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/credbroker/agent/internal/kubetest"
)

// BenchmarkCacheHit is the broker's share of a request for a cached pod:
// pod resolution, policy, identity lookup, cache lookup and metrics. The
// wire surfaces benchmark their own share (pkg/api/awscreds).
func BenchmarkCacheHit(b *testing.B) {
	e, _ := newEnvWithPod(b, "10.0.0.1")
	addr := netip.MustParseAddr("10.0.0.1")
	ctx := context.Background()
	if _, err := e.broker.Credentials(ctx, addr, awsRequest); err != nil {
		b.Fatalf("warm-up request: %v", err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.broker.Credentials(ctx, addr, awsRequest); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCacheHitParallel(b *testing.B) {
	e, _ := newEnvWithPod(b, "10.0.0.1")
	addr := netip.MustParseAddr("10.0.0.1")
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.broker.Credentials(ctx, addr, awsRequest); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkServiceAccountHeap reports the live heap the ServiceAccount
// watch holds per ServiceAccount of the cluster (heap-B/sa), informer store
// and lookup map included, for realistic objects (managed fields, labels,
// a token secret reference) of which the transform keeps only the identity
// annotation. Time per op is meaningless; run with -benchtime=1x.
func BenchmarkServiceAccountHeap(b *testing.B) {
	const n = 10000
	var sum float64
	for range b.N {
		objs := make([]runtime.Object, n)
		for i := range objs {
			objs[i] = realisticServiceAccount(i)
		}
		client := fake.NewClientset(objs...)
		objs = nil
		var before, after goruntime.MemStats
		goruntime.GC()
		goruntime.ReadMemStats(&before)
		sas, err := newServiceAccounts(kubetest.ServiceAccounts(client), []string{roleAnnotation})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); sas.run(ctx) }()
		for !sas.hasSynced() || sas.Len() < n {
			time.Sleep(time.Millisecond)
		}
		goruntime.GC()
		goruntime.ReadMemStats(&after)
		// The fake's tracker holds its own copies, allocated before: the
		// difference is the watch's share.
		sum += (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
		goruntime.KeepAlive(client)
		cancel()
		<-done
	}
	b.ReportMetric(sum/float64(b.N), "heap-B/sa")
}

func realisticServiceAccount(i int) *corev1.ServiceAccount {
	name := fmt.Sprintf("workload-%05d", i)
	sa := &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: fmt.Sprintf("team-%03d", i%300), Name: name,
			UID:             types.UID(fmt.Sprintf("6f1c2a4e-0000-4000-8000-%012d", i)),
			ResourceVersion: fmt.Sprint(100000 + i),
			Labels:          map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "argocd"},
			Annotations: map[string]string{
				"kubectl.kubernetes.io/last-applied-configuration": `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"annotations":{"eks.amazonaws.com/role-arn":"arn:aws:iam::111122223333:role/` + name + `"},"name":"` + name + `"}}`,
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "argocd-controller", Operation: metav1.ManagedFieldsOperationApply,
				APIVersion: "v1", FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{"f:annotations":{"f:eks.amazonaws.com/role-arn":{}},"f:labels":{"f:app.kubernetes.io/name":{}}}}`)}}},
		},
		Secrets: []corev1.ObjectReference{{Name: name + "-token-abcde"}},
	}
	if i%2 == 0 { // half of the accounts name a role
		sa.Annotations[roleAnnotation] = "arn:aws:iam::111122223333:role/" + name
	}
	return sa
}
