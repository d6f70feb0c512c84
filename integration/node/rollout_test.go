//go:build integration

package node

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/pkg/nodetaint"
)

// TestStartupTaint: the node registered with the startup taint and the
// agent removed it once serving; a workload created while the taint is on
// waits (Unschedulable) until a starting agent removes it, then gets
// credentials at once. The agent's own identity cannot untaint another node
// or add a taint to its own.
func TestStartupTaint(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	if !hasTaint(ctx, t, c, w.node.Name) {
		t.Log("the node's startup taint is gone (removed by the first agent)")
	} else {
		t.Fatal("the startup taint is still on the node after the rollout")
	}

	// As a new node would be: tainted, with a workload waiting for it.
	role := w.setupApp(ctx, t, "team-t", "app")
	patchTaints(ctx, t, c, w.node.Name, []corev1.Taint{{Key: StartupTaint, Effect: corev1.TaintEffectNoSchedule}})
	// Whatever happens below, later tests need an untainted node.
	t.Cleanup(func() {
		_ = nodetaint.Remove(ctx, nodetaint.Config{Nodes: kubetest.Nodes(c), NodeName: w.node.Name, Key: StartupTaint})
	})
	// The scheduler learns of the taint through its watch; a pod created in
	// the few milliseconds before may still be bound. Such a pod is deleted
	// and created again (at most 5 times): what is tested is that a pod the
	// scheduler evaluated against the tainted node waits.
	var waited bool
	for attempt := 1; attempt <= 5 && !waited; attempt++ {
		w.createWorkload(ctx, t, workloadSpec{ns: "team-t", name: "early", sa: "app", args: []string{"-rounds", "1"}})
		err := poll(ctx, 30*time.Second, "the workload to be Unschedulable", func() (bool, error) {
			p, err := c.CoreV1().Pods("team-t").Get(ctx, "early", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			if p.Spec.NodeName != "" {
				return false, errScheduled
			}
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
					return true, nil
				}
			}
			return false, nil
		})
		switch {
		case err == nil:
			waited = true
		case errors.Is(err, errScheduled):
			t.Logf("attempt %d: bound before the scheduler saw the taint; again", attempt)
			w.deletePodAndWait(ctx, t, "team-t", "early")
		default:
			t.Fatal(err)
		}
	}
	if !waited {
		t.Fatal("every workload was scheduled onto the tainted node")
	}
	t.Cleanup(func() { _ = c.CoreV1().Pods("team-t").Delete(ctx, "early", metav1.DeleteOptions{}) })
	// A new agent (the DaemonSet replaces the deleted pod) removes it.
	old := w.agentPod(ctx, t)
	start := time.Now()
	if err := c.CoreV1().Pods(agentNS).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p := w.waitPhase(ctx, t, "team-t", "early", 2*time.Minute, corev1.PodSucceeded, corev1.PodFailed)
	t.Logf("agent pod deleted → replacement removed the taint → workload ran: %v", time.Since(start).Round(100*time.Millisecond))
	r := w.logs(ctx, t, "team-t", "early", false)
	if p.Status.Phase != corev1.PodSucceeded || len(r.rounds) != 1 || r.rounds[0].RawStatus != 200 ||
		!strings.Contains(r.rounds[0].Arn, ":assumed-role/"+role[strings.LastIndex(role, "/")+1:]+"/") {
		t.Errorf("the workload that waited for the taint: phase %s, %+v", p.Status.Phase, r.rounds)
	}
	if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	// The agent's identity, with a token bound to its pod on node-1 (as
	// the kubelet mounts it), against another node and against its own.
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}, Spec: corev1.NodeSpec{
		Taints: []corev1.Taint{{Key: StartupTaint, Effect: corev1.TaintEffectNoSchedule}}}}
	if _, err := c.CoreV1().Nodes().Create(ctx, other, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CoreV1().Nodes().Delete(ctx, "node-2", metav1.DeleteOptions{}) })
	agent := w.agentClient(ctx, t)
	remove := []byte(`[{"op":"remove","path":"/spec/taints"}]`)
	_, err := agent.CoreV1().Nodes().Patch(ctx, "node-2", types.JSONPatchType, remove, metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "only modify the node its pod runs on") {
		t.Errorf("agent untainting node-2: %v, want Forbidden by the admission policy", err)
	}
	add, _ := json.Marshal([]map[string]any{{"op": "add", "path": "/spec/taints", "value": []corev1.Taint{{Key: "evil", Effect: corev1.TaintEffectNoExecute}}}})
	_, err = agent.CoreV1().Nodes().Patch(ctx, w.node.Name, types.JSONPatchType, add, metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "only remove taints") {
		t.Errorf("agent adding a taint to its node: %v, want Forbidden by the admission policy", err)
	}
	if _, err := agent.CoreV1().Nodes().Get(ctx, "node-2", metav1.GetOptions{}); err != nil {
		t.Errorf("agent get node-2: %v (RBAC grants get)", err)
	}
}

var errScheduled = errors.New("scheduled onto the tainted node")

// deletePodAndWait deletes a pod at once and waits until it is gone.
func (w *world) deletePodAndWait(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	zero := int64(0)
	c := w.node.CP.Client
	if err := c.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := poll(ctx, time.Minute, "pod "+ns+"/"+name+" to be gone", func() (bool, error) {
		_, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatal(err)
	}
}

func hasTaint(ctx context.Context, t *testing.T, c kubernetes.Interface, node string) bool {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range n.Spec.Taints {
		if tn.Key == StartupTaint {
			return true
		}
	}
	return false
}

func patchTaints(ctx context.Context, t *testing.T, c kubernetes.Interface, node string, taints []corev1.Taint) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"spec": map[string]any{"taints": taints}})
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// agentClient talks to the API server as the agent, with a token bound to
// its running pod (so carrying its node's name), as the kubelet mounts it.
func (w *world) agentClient(ctx context.Context, t *testing.T) kubernetes.Interface {
	t.Helper()
	pod := w.agentPod(ctx, t)
	tr, err := w.node.CP.Client.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, "credbroker-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(w.node.CP.Config)
	cfg.BearerToken = tr.Status.Token
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRolloutRestart: `kubectl rollout restart daemonset` while workload
// containers loop SDK calls: no SDK call fails (the SDK retries); what a
// client without retries saw is reported.
func TestRolloutRestart(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	roles, _ := w.startLoops(ctx, t, "60s", "200ms", "team-r1", "team-r2")
	before := w.sts.Counts()
	start := time.Now()
	w.rolloutRestart(ctx, t)
	took := time.Since(start)
	after := w.sts.Counts()
	t.Logf("rollout restart complete in %v; STS AssumeRoleWithWebIdentity during it: %d", took.Round(100*time.Millisecond), after.AssumeRole-before.AssumeRole)
	if took > 50*time.Second {
		t.Errorf("rollout took %v, longer than the workloads' 60 s loop covers safely", took)
	}
	w.checkLoops(ctx, t, roles)
}

// waitLoopsServed waits until every loop of startLoops has made three
// rounds from now with its own role: the agent serves them all.
func (w *world) waitLoopsServed(ctx context.Context, t *testing.T, roles map[string]string) {
	t.Helper()
	for ns, role := range roles {
		w.waitRounds(ctx, t, ns, "loop", time.Now(), 3, roleName(role))
	}
}

// startLoops sets up an application (ServiceAccount "app", its role) in
// each namespace with a "loop" workload that calls the SDK every interval
// for duration, and waits until every loop runs. It returns each
// namespace's role and pod.
func (w *world) startLoops(ctx context.Context, t *testing.T, duration, interval string, namespaces ...string) (map[string]string, map[string]*corev1.Pod) {
	t.Helper()
	c := w.node.CP.Client
	roles := map[string]string{}
	pods := map[string]*corev1.Pod{}
	for _, ns := range namespaces {
		roles[ns] = w.setupApp(ctx, t, ns, "app")
		w.createWorkload(ctx, t, workloadSpec{ns: ns, name: "loop", sa: "app", args: []string{"-duration", duration, "-interval", interval}})
		t.Cleanup(func() { _ = c.CoreV1().Pods(ns).Delete(ctx, "loop", metav1.DeleteOptions{}) })
	}
	for ns := range roles {
		pods[ns] = w.waitPhase(ctx, t, ns, "loop", time.Minute, corev1.PodRunning)
	}
	return roles, pods
}

// checkLoops waits for each namespace's "loop" workload to finish and
// checks that every SDK call succeeded (at least 100 rounds) with the
// namespace's role.
func (w *world) checkLoops(ctx context.Context, t *testing.T, roles map[string]string) {
	t.Helper()
	for ns, role := range roles {
		p := w.waitPhase(ctx, t, ns, "loop", 2*time.Minute, corev1.PodSucceeded, corev1.PodFailed)
		r := w.logs(ctx, t, ns, "loop", false)
		s := r.summary
		t.Logf("%s: %d rounds; SDK %d ok, %d failed; without retries %d ok, failures %v", ns, s.Rounds, s.SDKOK, s.SDKFailed, s.RawOK, s.RawFailed)
		if p.Status.Phase != corev1.PodSucceeded || s.SDKFailed != 0 || s.Rounds < 100 {
			t.Errorf("%s: phase %s, summary %+v; first SDK error: %s", ns, p.Status.Phase, s, r.firstSDKError())
		}
		roleName := role[strings.LastIndex(role, "/")+1:]
		for arn := range s.Arns {
			if !strings.Contains(arn, ":assumed-role/"+roleName+"/") {
				t.Errorf("%s got identity %s, want role %s", ns, arn, roleName)
			}
		}
	}
}

// TestAgentCrash: the agent container killed (SIGKILL, as an OOM kill
// would): the kubelet restarts it; the time until it serves again is
// reported, with what a looping SDK client saw; after the restart every
// call succeeds with the pod's own role.
func TestAgentCrash(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	roles, _ := w.startLoops(ctx, t, "30s", "100ms", "team-c")
	role := roles["team-c"]

	pod := w.agentPod(ctx, t)
	restarts := pod.Status.ContainerStatuses[0].RestartCount
	pid := w.containerPID(ctx, t, pod.Status.ContainerStatuses[0].ContainerID)
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var servingAgain time.Duration
	if err := poll(ctx, time.Minute, "the restarted agent to be ready", func() (bool, error) {
		code, err := w.probe(ctx, "http://127.0.0.1:2703/readyz")
		if err == nil && code == 200 && time.Since(killed) > 0 {
			p, err := c.CoreV1().Pods(agentNS).Get(ctx, pod.Name, metav1.GetOptions{})
			if err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount > restarts {
				servingAgain = time.Since(killed)
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	p := w.waitPhase(ctx, t, "team-c", "loop", time.Minute, corev1.PodSucceeded, corev1.PodFailed)
	r := w.logs(ctx, t, "team-c", "loop", false)
	// The client's view: the first round after the kill that got an answer
	// without retries.
	var firstOK time.Duration
	var failedRaw int
	for _, rl := range r.rounds {
		ts, _ := time.Parse(time.RFC3339Nano, rl.Time)
		if ts.Before(killed) {
			continue
		}
		if rl.RawStatus == 200 {
			firstOK = ts.Sub(killed)
			break
		}
		failedRaw++
	}
	t.Logf("agent SIGKILLed: ready again (restart count +1, /readyz 200) after %v; the client's first answer without retries after %v (%d rounds failed before); SDK: %d ok, %d failed; without retries failures %v",
		servingAgain.Round(10*time.Millisecond), firstOK.Round(10*time.Millisecond), failedRaw, r.summary.SDKOK, r.summary.SDKFailed, r.summary.RawFailed)
	// The SDK's three attempts span less than the restart, so calls made
	// while the agent is down fail (reported above); every call after
	// the restart must succeed.
	t.Logf("SDK errors: %s", r.firstSDKError())
	for _, rl := range r.rounds {
		ts, _ := time.Parse(time.RFC3339Nano, rl.Time)
		if rl.SDKError != "" && ts.After(killed.Add(servingAgain+2*time.Second)) {
			t.Errorf("round %d, %v after the agent was ready again, failed: %s", rl.N, ts.Sub(killed), rl.SDKError)
		}
	}
	_ = p
	roleName := role[strings.LastIndex(role, "/")+1:]
	for arn := range r.summary.Arns {
		if !strings.Contains(arn, ":assumed-role/"+roleName+"/") {
			t.Errorf("got identity %s, want role %s", arn, roleName)
		}
	}
}
