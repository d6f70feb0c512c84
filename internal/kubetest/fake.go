package kubetest

import (
	"context"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// IssueTokens makes c answer TokenRequests (the serviceaccounts/token
// subresource, which the fake's object tracker cannot serve) as an API
// server would: the request comes back with token(request) as its token,
// expiring ttl from now. Other ServiceAccount creates go on to the tracker.
func IssueTokens(c *fake.Clientset, ttl time.Duration, token func(*authenticationv1.TokenRequest) string) {
	c.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		out := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		out.Status.Token = token(out)
		out.Status.ExpirationTimestamp = metav1.NewTime(time.Now().Add(ttl))
		return true, out, nil
	})
}

// Runner is a component with a blocking Run, such as the broker.
type Runner interface {
	Run(ctx context.Context) error
}

// Run runs r until the test ends, and then waits for Run to return, so
// that no goroutine of r outlives the test (and its fake clock or
// clientset).
func Run(t testing.TB, r Runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// SyncedRunner is a Runner over informers that tells when their first
// list is in.
type SyncedRunner interface {
	Runner
	HasSynced() bool
}

// RunSynced runs r as Run does and returns once its informers have listed
// (a test that asks before then would meet an empty cache, not the case
// it means to test), failing the test after 10 seconds.
func RunSynced(t testing.TB, r SyncedRunner) {
	t.Helper()
	Run(t, r)
	for deadline := time.Now().Add(10 * time.Second); !r.HasSynced(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the informers did not list within 10s")
		}
	}
}
