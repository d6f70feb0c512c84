package nodetaint

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/credbroker/agent/internal/kubetest"
)

const key = "credbroker.io/agent-not-ready"

func node(taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Spec: corev1.NodeSpec{Taints: taints}}
}

var (
	startup = corev1.Taint{Key: key, Effect: corev1.TaintEffectNoSchedule}
	other   = corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
)

func fastBackoff() wait.Backoff {
	return wait.Backoff{Duration: time.Millisecond, Factor: 1, Steps: 1 << 30}
}

func TestRemove(t *testing.T) {
	for _, tc := range []struct {
		name    string
		taints  []corev1.Taint
		want    []corev1.Taint
		patches int
	}{
		{"only the startup taint", []corev1.Taint{startup}, nil, 1},
		{"keeps other taints", []corev1.Taint{other, startup}, []corev1.Taint{other}, 1},
		{"every effect of the key", []corev1.Taint{startup, {Key: key, Effect: corev1.TaintEffectNoExecute}, other}, []corev1.Taint{other}, 1},
		{"no taint: no patch", []corev1.Taint{other}, []corev1.Taint{other}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset(node(tc.taints...))
			var patches atomic.Int32
			c.PrependReactor("patch", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
				patches.Add(1)
				return false, nil, nil
			})
			if err := Remove(context.Background(), Config{Nodes: kubetest.Nodes(c), NodeName: "node-1", Key: key, Backoff: fastBackoff()}); err != nil {
				t.Fatal(err)
			}
			n, err := c.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(n.Spec.Taints) != len(tc.want) {
				t.Fatalf("taints %+v, want %+v", n.Spec.Taints, tc.want)
			}
			for i := range tc.want {
				if n.Spec.Taints[i].Key != tc.want[i].Key || n.Spec.Taints[i].Effect != tc.want[i].Effect {
					t.Errorf("taint %d = %+v, want %+v", i, n.Spec.Taints[i], tc.want[i])
				}
			}
			if int(patches.Load()) != tc.patches {
				t.Errorf("%d patches, want %d", patches.Load(), tc.patches)
			}
		})
	}
}

// TestRemoveRetries: failures (API server down, a refused patch) are
// retried until the patch goes through.
func TestRemoveRetries(t *testing.T) {
	c := fake.NewClientset(node(startup))
	var fails atomic.Int32
	c.PrependReactor("patch", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
		if fails.Add(1) <= 3 {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	if err := Remove(context.Background(), Config{Nodes: kubetest.Nodes(c), NodeName: "node-1", Key: key, Backoff: fastBackoff()}); err != nil {
		t.Fatal(err)
	}
	n, _ := c.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
	if len(n.Spec.Taints) != 0 || fails.Load() != 4 {
		t.Errorf("taints %+v after %d patch attempts", n.Spec.Taints, fails.Load())
	}
}

// TestRemoveGivesUpWithContext: a node that stays unreachable ends with
// ctx, and the error says why.
func TestRemoveGivesUpWithContext(t *testing.T) {
	c := fake.NewClientset()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := Remove(ctx, Config{Nodes: kubetest.Nodes(c), NodeName: "node-1", Key: key, Backoff: fastBackoff()})
	if err == nil {
		t.Fatal("want an error for a missing node")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
}

func TestRemoveNeedsConfig(t *testing.T) {
	if err := Remove(context.Background(), Config{}); err == nil {
		t.Error("want an error for an empty Config")
	}
}
