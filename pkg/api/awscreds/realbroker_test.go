package awscreds

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
	"github.com/credbroker/agent/pkg/podresolve"
)

// countingSTS mints credentials whose key names the role and counts the
// exchanges, each expiring an hour after the test clock's now.
type countingSTS struct {
	clk *clocktesting.FakeClock
	mu  sync.Mutex
	n   int
}

func (x *countingSTS) Exchange(_ context.Context, req exchange.Request) (exchange.Credentials, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.n++
	return exchange.Credentials{Kind: exchange.KindAWS, AccessKeyID: fmt.Sprintf("ASIA-%s-%d", req.Role, x.n),
		SecretAccessKey: exchange.Secret(fmt.Sprintf("secret-%d", x.n)), SessionToken: exchange.Secret(fmt.Sprintf("token-%d", x.n)),
		Expiration: x.clk.Now().Add(time.Hour)}, nil
}

// TestAnswerFollowsTheCacheEntry runs the surface over the real broker:
// every answer, cache hits included, is rendered from the entry the broker
// found for the calling pod, so that another pod (also one that took over
// an address), a refreshed credential or an evicted one is never answered
// with bytes of an earlier answer. (A body kept with each cache entry was
// tried and left out: bench/README.md, "What was tried".)
func TestAnswerFollowsTheCacheEntry(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	client := fake.NewClientset()
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		out := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		out.Status.Token = "SATOKEN"
		out.Status.ExpirationTimestamp = metav1.NewTime(clk.Now().Add(10 * time.Minute))
		return true, out, nil
	})
	for _, sa := range []string{"a", "b"} {
		obj := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: sa,
			Annotations: map[string]string{aws.DefaultAnnotation: "arn:aws:iam::111122223333:role/" + sa}}}
		if _, err := client.CoreV1().ServiceAccounts("ns").Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	res := &testfake.Resolver{}
	sts := &countingSTS{clk: clk}
	b, err := broker.New(broker.Config{ServiceAccounts: kubetest.ServiceAccounts(client), Resolver: res, Clock: clk,
		Clouds: []broker.Cloud{aws.Profile(aws.ProfileConfig{Exchanger: sts})}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); !b.HasSynced(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the broker's ServiceAccount watch did not list")
		}
	}
	h, err := New(b, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	setPod := func(addr, name, sa string) {
		res.Set(addr, podresolve.Pod{Namespace: "ns", Name: name, UID: types.UID("uid-" + name), ServiceAccount: sa})
	}
	// get answers addr's request; the body must be one document.
	get := func(addr string) (key, expiration string) {
		t.Helper()
		rec := do(h, http.MethodGet, Path, addr, nil)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", addr, rec.Code, rec.Body)
		}
		var doc struct{ AccessKeyId, Expiration string }
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
			t.Fatalf("%s: %v: %s", addr, err, rec.Body)
		}
		return doc.AccessKeyId, doc.Expiration
	}
	want := func(addr, wantKey string) {
		t.Helper()
		// Twice: the first answer may be a fetch, the second is a hit.
		for i := range 2 {
			if got, _ := get(addr); got != wantKey {
				t.Fatalf("%s, request %d: key %q, want %q", addr, i, got, wantKey)
			}
		}
	}

	setPod("10.0.0.1", "p1", "a")
	setPod("10.0.0.2", "p2", "b")
	want("10.0.0.1", "ASIA-arn:aws:iam::111122223333:role/a-1")
	want("10.0.0.2", "ASIA-arn:aws:iam::111122223333:role/b-2")
	want("10.0.0.1", "ASIA-arn:aws:iam::111122223333:role/a-1")

	// Another pod of the same ServiceAccount takes p1's address: its own
	// credentials, never p1's kept body.
	setPod("10.0.0.1", "p3", "a")
	want("10.0.0.1", "ASIA-arn:aws:iam::111122223333:role/a-3")

	// p2's credential falls below the freshness floor: the broker fetches
	// again, and the new credential's body (key and expiration) is served.
	_, before := get("10.0.0.2")
	clk.Step(time.Hour - broker.FreshnessFloor + time.Second)
	key, after := get("10.0.0.2")
	if key != "ASIA-arn:aws:iam::111122223333:role/b-4" || after == before {
		t.Fatalf("after the refresh: key %q expiring %s (before: %s), want a new key and expiration", key, after, before)
	}
	want("10.0.0.2", "ASIA-arn:aws:iam::111122223333:role/b-4")

	// p3 leaves the node: its entry is evicted and nothing is served from
	// it, kept body or not; back under a new UID it gets new credentials.
	b.PodGone(podresolve.Pod{Namespace: "ns", Name: "p3", UID: "uid-p3", ServiceAccount: "a"})
	res.Fail("10.0.0.1", podresolve.ErrNotFound)
	if rec := do(h, http.MethodGet, Path, "10.0.0.1", nil); rec.Code == http.StatusOK {
		t.Fatalf("a departed pod's address was answered 200: %s", rec.Body)
	}
}
