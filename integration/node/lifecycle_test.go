//go:build integration

package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// roleOf is the role name in an assumed-role ARN ("" if none).
func roleOf(arn string) string {
	_, rest, ok := strings.Cut(arn, ":assumed-role/")
	if !ok {
		return ""
	}
	role, _, _ := strings.Cut(rest, "/")
	return role
}

func roleName(roleARN string) string { return roleARN[strings.LastIndex(roleARN, "/")+1:] }

// checkOwn fails for any round that got an identity other than want, and
// returns how many rounds got want and how many got an error.
func checkOwn(t *testing.T, who string, r result, want string) (ok, failed int) {
	t.Helper()
	for _, rl := range r.rounds {
		switch got := roleOf(rl.Arn); {
		case rl.Arn == "":
			failed++
		case got != want:
			t.Errorf("%s round %d got role %s, want %s: ANOTHER POD'S IDENTITY", who, rl.N, got, want)
		default:
			ok++
		}
	}
	return ok, failed
}

// tokenRequests counts the agent's TokenRequests bound to a pod UID.
func (w *world) tokenRequests(t *testing.T, uid string) int {
	t.Helper()
	trs, err := w.node.CP.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tr := range trs {
		if tr.BoundUID == uid && strings.HasSuffix(tr.User, ":credbroker-agent") {
			n++
		}
	}
	return n
}

// TestJobCompletesAndAddressIsReused: a Job's pod completes (Succeeded,
// still in the API); pods of another ServiceAccount are created until one
// gets the completed pod's address (host-local hands out 8): that pod gets
// its own role, never the Job's.
func TestJobCompletesAndAddressIsReused(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	roleJ := w.setupApp(ctx, t, "team-j", "batch")
	roleK := w.setupApp(ctx, t, "team-k", "app")
	no := false
	zero := int32(0)
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-j", Name: "once"},
		Spec: batchv1.JobSpec{BackoffLimit: &zero, Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			ServiceAccountName: "batch", AutomountServiceAccountToken: &no, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "client", Image: workloadImage, Args: []string{"-rounds", "1"}, Env: []corev1.EnvVar{
				{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: credsURL},
				{Name: "AWS_REGION", Value: "eu-west-1"},
				{Name: "AWS_ENDPOINT_URL_STS", Value: w.sts.URL()},
			}}},
		}}},
	}
	if _, err := c.BatchV1().Jobs("team-j").Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var jobPod *corev1.Pod
	if err := poll(ctx, 90*time.Second, "the Job's pod to succeed", func() (bool, error) {
		l, err := c.CoreV1().Pods("team-j").List(ctx, metav1.ListOptions{LabelSelector: "job-name=once"})
		if err != nil || len(l.Items) != 1 {
			return false, nil
		}
		jobPod = &l.Items[0]
		if jobPod.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("job pod failed: %+v", jobPod.Status.ContainerStatuses)
		}
		return jobPod.Status.Phase == corev1.PodSucceeded, nil
	}); err != nil {
		t.Fatal(err)
	}
	jr := w.logs(ctx, t, "team-j", jobPod.Name, false)
	if ok, _ := checkOwn(t, "job", jr, roleName(roleJ)); ok != 1 {
		t.Fatalf("the Job's pod: %+v", jr.rounds)
	}
	jobIP := jobPod.Status.PodIP
	t.Logf("Job pod %s (IP %s) Succeeded: STS calls with its token %d, TokenRequests %d", jobPod.Name, jobIP,
		w.sts.PodCalls(string(jobPod.UID)), w.tokenRequests(t, string(jobPod.UID)))
	reused := false
	for i := 0; i < 9 && !reused; i++ {
		name := "k-" + strconv.Itoa(i)
		w.createWorkload(ctx, t, workloadSpec{ns: "team-k", name: name, sa: "app", args: []string{"-rounds", "1"}})
		p := w.waitPhase(ctx, t, "team-k", name, 90*time.Second, corev1.PodSucceeded, corev1.PodFailed)
		r := w.logs(ctx, t, "team-k", name, false)
		ok, failed := checkOwn(t, name, r, roleName(roleK))
		reused = p.Status.PodIP == jobIP
		if reused {
			t.Logf("pod %s got the completed Job pod's IP %s: own role %d, errors %d; STS calls with its token %d, with the Job pod's %d",
				name, jobIP, ok, failed, w.sts.PodCalls(string(p.UID)), w.sts.PodCalls(string(jobPod.UID)))
			if ok != 1 {
				t.Errorf("the pod on the reused address did not get its own role: %+v", r.rounds)
			}
		}
		w.deletePodAndWait(ctx, t, "team-k", name)
	}
	if !reused {
		t.Errorf("no pod got the Job pod's address %s in 9 tries", jobIP)
	}
}

// TestContainerRestart: the container of a running pod exits and the
// kubelet restarts it in the same pod (same UID, same IP): it gets its own
// role again, from the agent's cache (no new upstream call).
func TestContainerRestart(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	role := w.setupApp(ctx, t, "team-cr", "app")
	w.createWorkload(ctx, t, workloadSpec{ns: "team-cr", name: "again", sa: "app", restart: corev1.RestartPolicyAlways, args: []string{"-rounds", "1"}})
	t.Cleanup(func() { w.deletePodAndWait(ctx, t, "team-cr", "again") })
	var p *corev1.Pod
	if err := poll(ctx, 90*time.Second, "a container restart", func() (bool, error) {
		var err error
		p, err = c.CoreV1().Pods("team-cr").Get(ctx, "again", metav1.GetOptions{})
		return err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	stsBefore := w.sts.PodCalls(string(p.UID))
	// The restarted container's own run (the current log, once it ran).
	if err := poll(ctx, 60*time.Second, "the restarted container to finish a round", func() (bool, error) {
		p, _ = c.CoreV1().Pods("team-cr").Get(ctx, "again", metav1.GetOptions{})
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount >= 2 || (cs.State.Terminated != nil && cs.RestartCount >= 1), nil
	}); err != nil {
		t.Fatal(err)
	}
	var prev result
	if err := poll(ctx, 30*time.Second, "the previous container's log", func() (bool, error) {
		var err error
		prev, err = w.tryLogs(ctx, "team-cr", "again", true)
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	ok, failed := checkOwn(t, "restarted container", prev, roleName(role))
	if ok != 1 {
		t.Errorf("restarted container: %d ok, %d failed: %+v", ok, failed, prev.rounds)
	}
	t.Logf("container restarted %d times in pod %s: own role each time; STS calls with its token %d (before the last run %d), TokenRequests %d",
		p.Status.ContainerStatuses[0].RestartCount, p.Status.PodIP, w.sts.PodCalls(string(p.UID)), stsBefore, w.tokenRequests(t, string(p.UID)))
}

// TestSandboxKilled: the pod's sandbox (its pause process) is killed; the
// kubelet makes a new sandbox for the same pod (same UID, possibly a new
// IP) and restarts the container: own role, or a retryable error while the
// pod has no address, never another pod's.
func TestSandboxKilled(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	role := w.setupApp(ctx, t, "team-sb", "app")
	w.createWorkload(ctx, t, workloadSpec{ns: "team-sb", name: "sb", sa: "app", restart: corev1.RestartPolicyAlways, args: []string{"-duration", "600s", "-interval", "200ms"}})
	t.Cleanup(func() { w.deletePodAndWait(ctx, t, "team-sb", "sb") })
	p := w.waitPhase(ctx, t, "team-sb", "sb", time.Minute, corev1.PodRunning)
	oldIP := p.Status.PodIP
	pid := pausePID(t, string(p.UID))
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 90*time.Second, "the pod to run again in a new sandbox", func() (bool, error) {
		p, _ = c.CoreV1().Pods("team-sb").Get(ctx, "sb", metav1.GetOptions{})
		if p == nil || len(p.Status.ContainerStatuses) != 1 {
			return false, nil
		}
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount >= 1 && cs.State.Running != nil && p.Status.PodIP != "", nil
	}); err != nil {
		t.Fatal(err)
	}
	recreated := time.Since(killed)
	// Let the new container make a few rounds (each round is 200 ms).
	var cur result
	if err := poll(ctx, 30*time.Second, "rounds in the new sandbox", func() (bool, error) {
		cur, _ = w.tryLogs(ctx, "team-sb", "sb", false)
		return len(cur.rounds) >= 5, nil
	}); err != nil {
		t.Fatal(err)
	}
	prev := w.logs(ctx, t, "team-sb", "sb", true)
	pOK, pFailed := checkOwn(t, "before the kill", prev, roleName(role))
	cOK, cFailed := checkOwn(t, "new sandbox", cur, roleName(role))
	t.Logf("sandbox killed: new sandbox running after %v, IP %s → %s (same UID %s); old container %d ok / %d failed, new %d ok / %d failed; STS calls with its token %d, TokenRequests %d",
		recreated.Round(100*time.Millisecond), oldIP, p.Status.PodIP, p.UID, pOK, pFailed, cOK, cFailed,
		w.sts.PodCalls(string(p.UID)), w.tokenRequests(t, string(p.UID)))
	if cOK < 5 {
		t.Errorf("the container in the new sandbox: %+v", cur.rounds)
	}
}

// pausePID finds the pause process of a pod by its cgroup (the kubelet's
// cgroupfs layout names the pod's cgroup pod<UID>).
func pausePID(t *testing.T, uid string) int {
	t.Helper()
	pids := processes(func(proc string) bool {
		exe, err := os.Readlink(filepath.Join(proc, "exe"))
		if err != nil || filepath.Base(exe) != "pause" {
			return false
		}
		cg, err := os.ReadFile(filepath.Join(proc, "cgroup"))
		return err == nil && strings.Contains(string(cg), "pod"+uid)
	})
	if len(pids) == 0 {
		t.Fatalf("no pause process for pod %s", uid)
	}
	return pids[0]
}

// TestGracefulDeletion: a pod deleted with a grace period keeps running
// until it stops (here 3 s after SIGTERM); what it gets from the agent
// meanwhile is reported (its own role or an error), and it never gets
// another pod's identity.
func TestGracefulDeletion(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	role := w.setupApp(ctx, t, "team-gd", "app")
	w.createWorkload(ctx, t, workloadSpec{ns: "team-gd", name: "bye", sa: "app", grace: 10,
		args: []string{"-duration", "120s", "-interval", "200ms", "-term-grace", "3s"}})
	p := w.waitPhase(ctx, t, "team-gd", "bye", time.Minute, corev1.PodRunning)
	uid := string(p.UID)
	// Some rounds before the deletion.
	if err := poll(ctx, 30*time.Second, "rounds before the deletion", func() (bool, error) {
		r, _ := w.tryLogs(ctx, "team-gd", "bye", false)
		return len(r.rounds) >= 5, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.CoreV1().Pods("team-gd").Delete(ctx, "bye", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The container stops 3 s after SIGTERM; read its log before the pod
	// (and the log) is gone.
	var r result
	var term *corev1.ContainerStateTerminated
	if err := poll(ctx, 30*time.Second, "the terminating pod's last rounds", func() (bool, error) {
		p, err := c.CoreV1().Pods("team-gd").Get(ctx, "bye", metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("the pod went before its log could be read: %w", err)
		}
		cs := p.Status.ContainerStatuses
		if len(cs) == 1 && cs[0].State.Terminated != nil {
			term = cs[0].State.Terminated
			r = w.logs(ctx, t, "team-gd", "bye", false)
			return true, nil
		}
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	var before, termOK, termFailed int
	for _, rl := range r.rounds {
		switch {
		case !rl.Terminating:
			before++
		case rl.Arn != "":
			termOK++
		default:
			termFailed++
		}
	}
	checkOwn(t, "terminating pod", r, roleName(role))
	t.Logf("graceful deletion: %d rounds before; while terminating %d got their own role, %d an error (raw status of the last: %d); STS calls with its token %d, TokenRequests %d",
		before, termOK, termFailed, lastRaw(r), w.sts.PodCalls(uid), w.tokenRequests(t, uid))
	t.Logf("container ended %s (exit %d); errors while terminating: %s", term.Reason, term.ExitCode, r.firstSDKError())
}

func lastRaw(r result) int {
	if len(r.rounds) == 0 {
		return 0
	}
	return r.rounds[len(r.rounds)-1].RawStatus
}
