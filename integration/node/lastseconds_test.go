//go:build integration

package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/node/workload/lines"
)

// readRounds reads what the workload wrote to its -out file so far.
func readRounds(path string) result {
	raw, _ := os.ReadFile(path)
	return parseResult(raw)
}

func roundTime(t *testing.T, rl lines.Round) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, rl.Time)
	if err != nil {
		t.Fatalf("round %d: time %q: %v", rl.N, rl.Time, err)
	}
	return ts
}

// TestLastSeconds (issue 18, invariant 12): a workload that flushes its
// state on SIGTERM asks for credentials in its grace period and gets its
// own role; from the pod's sandbox, after its grace period ended, nothing.
// The workload writes its rounds to a hostPath file: the pod's log goes
// with the pod.
func TestLastSeconds(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	const ns = "team-ls"
	role := roleName(w.setupApp(ctx, t, ns, "app"))
	// The workload runs as UID 1000: t.TempDir's parents are 0700.
	dir, err := os.MkdirTemp("", "credbroker-lastseconds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}

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
			raw, _ := os.ReadFile(out)
			logs, lerr := w.tryLogs(ctx, ns, name, false)
			t.Fatalf("%v; %s holds %q; the pod's log: %+v %v", err, out, raw, logs.rounds, lerr)
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

	// containerd kills the container at the end of its grace period
	// (CRI StopContainer carries the timeout), so nothing in it can ask
	// later; with the kubelet paused, the pod's sandbox keeps its network
	// namespace and address, and the test asks from there, as a process
	// left in the pod would.
	t.Run("NothingAfterTheGracePeriod", func(t *testing.T) {
		const slack = 300 * time.Millisecond
		p, out := start(t, "late", 6, "300s")
		uid := string(p.UID)
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
		resume := w.pauseKubelet(t)
		pausedAt := time.Now()
		h, err := netns.Open(fmt.Sprintf("/proc/%d/ns/net", pausePID(t, uid)))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.DialContext, DisableKeepAlives: true}}
		// ask reports the answer's status and whose credentials a 200
		// carried.
		ask := func() (int, string) {
			resp, err := client.Get(credsURL)
			if err != nil {
				return 0, err.Error()
			}
			defer resp.Body.Close()
			var creds struct{ AccessKeyId string }
			_ = json.NewDecoder(resp.Body).Decode(&creds)
			id, _ := w.sts.Lookup(creds.AccessKeyId)
			return resp.StatusCode, id.PodUID
		}
		if time.Until(deadline) < time.Second {
			t.Fatalf("the kubelet was paused only %v before the grace period's end", time.Until(deadline))
		}
		before, whose := ask()
		if before != http.StatusOK || whose != uid {
			t.Errorf("from the pod's sandbox in its grace period: %d, credentials of pod %q; want 200 with its own", before, whose)
		}
		time.Sleep(time.Until(deadline.Add(slack))) // the moment under test, not a wait for an event
		var after []int
		for range 3 {
			status, whose := ask()
			after = append(after, status)
			if status == http.StatusOK {
				t.Errorf("from the pod's sandbox %v after its grace period ended: 200 with pod %q's credentials; want nothing", time.Since(deadline), whose)
			}
		}
		resume()
		r := readRounds(out)
		var inGraceOK, inGraceFailed, afterServed int
		for _, rl := range r.rounds {
			at := roundTime(t, rl)
			switch {
			case !rl.Terminating:
			case at.Before(deadline.Add(-time.Second)):
				if roleOf(rl.Arn) == role && rl.RawStatus == 200 {
					inGraceOK++
				} else {
					inGraceFailed++
				}
			case at.After(deadline.Add(slack)) && (rl.Arn != "" || rl.RawStatus == 200):
				afterServed++
			}
		}
		checkOwn(t, "late", r, role)
		t.Logf("after the grace period: kubelet paused %v; the container's %d rounds in the grace period got its own role, %d did not; from its sandbox: %d before the end, %v after it; container rounds served after the end: %d",
			time.Since(pausedAt).Round(100*time.Millisecond), inGraceOK, inGraceFailed, before, after, afterServed)
		if inGraceOK < 3 || inGraceFailed > 0 || afterServed > 0 {
			t.Errorf("container rounds: %d in the grace period with its own role, %d without, %d served after its end", inGraceOK, inGraceFailed, afterServed)
		}
	})
}
