//go:build integration

package deploy_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/testenv"
)

// TestServiceAccountListCost measures what the agent's ServiceAccount watch
// costs the API server at start: the bytes of one LIST of every
// ServiceAccount, as protobuf (what the agent asks for) and as JSON, for
// accounts shaped like a GitOps-managed cluster's (labels, a role
// annotation on half of them, the last-applied configuration, managed
// fields). docs/upstream-cost.md scales the figure to 10,000 accounts.
func TestServiceAccountListCost(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	ctx := t.Context()
	const n, namespaces = 2000, 20
	for i := range namespaces {
		if err := cp.EnsureNamespace(ctx, fmt.Sprintf("team-%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				errs <- createRealisticServiceAccount(ctx, cp.Client.CoreV1().ServiceAccounts(fmt.Sprintf("team-%02d", i%namespaces)), i)
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	sizes := map[string]int{}
	for name, accept := range map[string]string{
		"protobuf": "application/vnd.kubernetes.protobuf",
		"json":     "application/json",
	} {
		// ResourceVersion 0: served from the watch cache, as a reflector's
		// first list is.
		body, err := cp.Client.CoreV1().RESTClient().Get().Resource("serviceaccounts").
			Param("resourceVersion", "0").SetHeader("Accept", accept).DoRaw(ctx)
		if err != nil {
			t.Fatalf("LIST as %s: %v", name, err)
		}
		sizes[name] = len(body)
	}
	for name, size := range sizes {
		per := float64(size) / n
		t.Logf("LIST of %d ServiceAccounts as %s: %d bytes, %.0f B per account, %.1f MB per 10,000", n, name, size, per, per*10000/1e6)
		// Bounds that only catch a broken measurement (an empty or error
		// answer), not a figure.
		if per < 100 || per > 10000 {
			t.Errorf("%s: %.0f B per ServiceAccount is not a plausible LIST", name, per)
		}
	}
}

func createRealisticServiceAccount(ctx context.Context, sas interface {
	Create(context.Context, *corev1.ServiceAccount, metav1.CreateOptions) (*corev1.ServiceAccount, error)
}, i int) error {
	name := fmt.Sprintf("workload-%05d", i)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name:   name,
		Labels: map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "argocd"},
		Annotations: map[string]string{
			"kubectl.kubernetes.io/last-applied-configuration": `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"` + name + `"}}`,
		},
	}}
	if i%2 == 0 {
		sa.Annotations["eks.amazonaws.com/role-arn"] = "arn:aws:iam::111122223333:role/" + name
	}
	_, err := sas.Create(ctx, sa, metav1.CreateOptions{FieldManager: "argocd-controller"})
	return err
}
