//go:build integration

package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// readRounds reads what the workload wrote to its -out file so far.
func readRounds(path string) result {
	raw, _ := os.ReadFile(path)
	return parseResult(raw)
}

func roundTime(t *testing.T, rl roundLine) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, rl.Time)
	if err != nil {
		t.Fatalf("round %d: time %q: %v", rl.N, rl.Time, err)
	}
	return ts
}

// TestLastSeconds (issue 18, invariant 12): a workload that flushes its
// state on SIGTERM asks for credentials in its grace period and gets its
// own role; a container still running after its grace period ended (the
// kubelet paused, so it cannot kill it) gets nothing. The workload writes
// its rounds to a hostPath file: the pod's log goes with the pod.
func TestLastSeconds(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	const ns = "team-ls"
	role := roleName(w.setupApp(ctx, t, ns, "app"))
	dir := t.TempDir()

	// start runs the workload until a few rounds got the pod's own role.
	start := func(t *testing.T, name string, grace int64, termGrace string) (*corev1.Pod, string) {
		t.Helper()
		out := filepath.Join(dir, name+".jsonl")
		w.createWorkload(ctx, t, workloadSpec{ns: ns, name: name, sa: "app", grace: grace, hostDir: dir,
			args: []string{"-duration", "600s", "-interval", "200ms", "-term-grace", termGrace, "-out", "/out/" + name + ".jsonl"}})
		t.Cleanup(func() { w.deletePodAndWait(context.Background(), t, ns, name) })
		p := w.waitPhase(ctx, t, ns, name, time.Minute, corev1.PodRunning)
		if err := poll(ctx, 30*time.Second, "rounds before the deletion", func() (bool, error) {
			ok, _ := checkOwn(t, name, readRounds(out), role)
			return ok >= 3, nil
		}); err != nil {
			t.Fatal(err)
		}
		return p, out
	}
	// deleteGracefully deletes the pod with its own grace period and
	// returns the end of it.
	deleteGracefully := func(t *testing.T, name string) time.Time {
		t.Helper()
		if err := c.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || p.DeletionTimestamp == nil {
			t.Fatalf("pod %s after its deletion: %v %+v", name, err, p)
		}
		return p.DeletionTimestamp.Time
	}

	t.Run("OwnRoleAfterSIGTERM", func(t *testing.T) {
		p, out := start(t, "flush", 30, "5s")
		deadline := deleteGracefully(t, p.Name)
		// The container stops 5 s after SIGTERM; the kubelet then
		// deletes the pod.
		if err := poll(ctx, 90*time.Second, "the pod to finish and go", func() (bool, error) {
			_, err := c.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			t.Fatal(err)
		}
		r := readRounds(out)
		var termOK, termFailed int
		for _, rl := range r.rounds {
			switch {
			case !rl.Terminating:
			case roleOf(rl.Arn) == role && rl.RawStatus == 200:
				termOK++
			default:
				termFailed++
			}
		}
		checkOwn(t, "flush", r, role)
		t.Logf("own role after SIGTERM: %d rounds while terminating got the pod's own role (SDK and plain GET), %d did not; the grace period ran to %s; STS calls with its token %d, TokenRequests %d",
			termOK, termFailed, deadline.Format(time.RFC3339), w.sts.PodCalls(string(p.UID)), w.tokenRequests(t, string(p.UID)))
		if termOK < 5 || termFailed > 0 {
			t.Errorf("after SIGTERM: %d rounds got the own role, %d did not (%s); want every round served", termOK, termFailed, r.firstSDKError())
		}
		if !r.summary.Summary {
			t.Error("the workload wrote no summary: it did not stop on its own after SIGTERM")
		}
	})

	t.Run("NothingAfterTheGracePeriod", func(t *testing.T) {
		const slack = 300 * time.Millisecond
		p, out := start(t, "late", 6, "300s")
		deadline := deleteGracefully(t, p.Name)
		if err := poll(ctx, 30*time.Second, "the workload to get SIGTERM", func() (bool, error) {
			for _, rl := range readRounds(out).rounds {
				if rl.Terminating {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			t.Fatal(err)
		}
		// Paused, the kubelet cannot kill the container at the end of
		// its grace period: it goes on asking.
		resume := w.pauseKubelet(t)
		pausedAt := time.Now()
		if time.Until(deadline) < time.Second {
			resume()
			t.Fatalf("the kubelet was paused only %v before the grace period's end; the container may be killed", time.Until(deadline))
		}
		late := func(r result) (n int) {
			for _, rl := range r.rounds {
				if roundTime(t, rl).After(deadline.Add(slack)) {
					n++
				}
			}
			return n
		}
		err := poll(ctx, 60*time.Second, "two rounds after the grace period", func() (bool, error) {
			// A round starts, and is written when it ends.
			return late(readRounds(out)) >= 2, nil
		})
		resume()
		paused := time.Since(pausedAt)
		if err != nil {
			t.Fatal(err)
		}
		r := readRounds(out)
		var inGraceOK, inGraceFailed, afterServed, afterRefused int
		for _, rl := range r.rounds {
			at := roundTime(t, rl)
			switch {
			case !rl.Terminating:
			case at.Before(deadline.Add(-2 * time.Second)):
				// Each round takes up to ~200 ms with no retries.
				if roleOf(rl.Arn) == role && rl.RawStatus == 200 {
					inGraceOK++
				} else {
					inGraceFailed++
				}
			case at.After(deadline.Add(slack)):
				if rl.Arn != "" || rl.RawStatus == 200 {
					afterServed++
					t.Errorf("round %d at %s, %v after the grace period ended: role %q, plain GET %d; want nothing",
						rl.N, rl.Time, at.Sub(deadline), roleOf(rl.Arn), rl.RawStatus)
				} else {
					afterRefused++
				}
			}
		}
		checkOwn(t, "late", r, role)
		t.Logf("after the grace period: kubelet paused %v; %d rounds in the grace period got the own role, %d did not; %d rounds after its end got nothing, %d got credentials; SDK errors: %s",
			paused.Round(100*time.Millisecond), inGraceOK, inGraceFailed, afterRefused, afterServed, r.firstSDKError())
		if inGraceOK < 3 || inGraceFailed > 0 {
			t.Errorf("in the grace period: %d rounds got the own role, %d did not; want every round served", inGraceOK, inGraceFailed)
		}
	})
}
