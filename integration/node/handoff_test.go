//go:build integration

package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// handoffSocket is the DaemonSet's --handoff-socket: a hostPath, so the
// test (on the host, as root) reaches it at the same path.
const handoffSocket = "/var/run/credbroker/handoff.sock"

// TestRolloutHandOff: `kubectl rollout restart` while workload containers
// loop SDK calls: no call fails, and neither the STS peer nor the API server
// sees a call for the workloads' pods during the rollout: the new agent took
// the old one's cache. A peer of another UID on the socket gets nothing.
func TestRolloutHandOff(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	roles, pods := w.startLoops(ctx, t, "50s", "200ms", "team-h1", "team-h2")
	w.waitLoopsServed(ctx, t, roles)
	before := w.upstreamCalls(t, pods)
	start := time.Now()
	w.rolloutRestart(ctx, t)
	took := time.Since(start)
	after := w.upstreamCalls(t, pods)
	taken := w.agentMetric(ctx, t, "credbroker_handoff_entries_total", "taken")
	t.Logf("rollout restart with hand-off complete in %v; the new agent took %v entries; STS and TokenRequests for the workloads before %v, after %v",
		took.Round(100*time.Millisecond), taken, before, after)
	if after != before {
		t.Errorf("upstream calls for the workloads' pods during the rollout: %v → %v, want none", before, after)
	}
	if got := w.agentMetric(ctx, t, "credbroker_handoff_received_total", "complete"); got != 1 {
		t.Errorf("the new agent's complete hand-offs: %v, want 1", got)
	}
	if taken < 2 {
		t.Errorf("the new agent took %v entries, want at least the 2 workloads'", taken)
	}
	w.checkLoops(ctx, t, roles)

	// A forged peer: this test runs as root, not as the agent's UID 64023.
	// Root passes the directory's mode, so only SO_PEERCRED stands between
	// it and the cache.
	refused := w.agentMetric(ctx, t, "credbroker_handoff_sent_total", "peer_refused")
	conn, err := net.Dial("unix", handoffSocket)
	if err != nil {
		t.Fatalf("connecting to the agent's hand-off socket as root: %v", err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, conn)
	conn.Close()
	if n != 0 || err != nil {
		t.Errorf("a peer of UID 0 read %d bytes (%v), want 0 and a closed connection", n, err)
	}
	if got := w.agentMetric(ctx, t, "credbroker_handoff_sent_total", "peer_refused"); got != refused+1 {
		t.Errorf("peer_refused hand-offs %v → %v, want one more", refused, got)
	}
	if fi, err := os.Stat(handoffSocket[:strings.LastIndex(handoffSocket, "/")]); err != nil || fi.Mode().Perm() != 0o700 ||
		fi.Sys().(*syscall.Stat_t).Uid != 64023 {
		t.Errorf("the hand-off directory: %v %v, want mode 0700 owned by 64023", fi.Mode(), err)
	}
}

// TestHandOffPolicyChanged: the new agent's template allows only one of two
// roles; the hand-off from the old agent (which allowed both) carries the
// allowed one and not the other, which is refused by the new agent's own
// policy, not taken on the old one's word.
func TestHandOffPolicyChanged(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	roles, pods := w.startLoops(ctx, t, "45s", "200ms", "team-hp1", "team-hp2")
	w.waitLoopsServed(ctx, t, roles)
	before := w.upstreamCalls(t, map[string]*corev1.Pod{"team-hp1": pods["team-hp1"]})
	patch := fmt.Sprintf(`[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--allowed-role-arn=%s"}]`, roles["team-hp1"])
	t.Cleanup(func() { w.removeAgentArg(ctx, t, "--allowed-role-arn=") })
	if _, err := w.node.CP.Kubectl(ctx, "-n", agentNS, "patch", "daemonset/"+agentDS, "--type=json", "-p", patch); err != nil {
		t.Fatal(err)
	}
	waitUpdated(ctx, t, w)
	after := w.upstreamCalls(t, map[string]*corev1.Pod{"team-hp1": pods["team-hp1"]})
	policy := w.agentMetric(ctx, t, "credbroker_handoff_entries_total", "policy")
	t.Logf("the new agent (allowing only %s) refused %v entries by policy; upstream calls for team-hp1's pod %v → %v", roles["team-hp1"], policy, before, after)
	if policy < 1 {
		t.Errorf("entries refused by policy: %v, want at least team-hp2's", policy)
	}
	if after != before {
		t.Errorf("the allowed pod was fetched again (%v → %v): its entry was not carried", before, after)
	}
	// What each workload is served now, from the new agent alone.
	since := time.Now().Add(2 * time.Second)
	w.waitRounds(ctx, t, "team-hp1", "loop", since, 5, roleName(roles["team-hp1"]))
	if err := poll(ctx, 30*time.Second, "team-hp2 to be refused by the new agent", func() (bool, error) {
		r, err := w.tryLogs(ctx, "team-hp2", "loop", false)
		if err != nil {
			return false, nil
		}
		refused := 0
		for _, rl := range r.rounds {
			ts, _ := time.Parse(time.RFC3339Nano, rl.Time)
			if ts.Before(since) {
				continue
			}
			if rl.RawStatus == http.StatusOK {
				return false, fmt.Errorf("round %d at %s: team-hp2 was served credentials of a role the new agent does not allow", rl.N, rl.Time)
			}
			if rl.RawStatus == http.StatusForbidden {
				refused++
			}
		}
		return refused >= 3, nil
	}); err != nil {
		t.Error(err)
	}
}

// TestHandOffPredecessorKilled: the old agent is frozen (SIGSTOP), the new
// one connects to its socket and waits; the old one is killed (SIGKILL)
// mid-hand-off. The new agent prefetches as it would without a hand-off and
// serves.
func TestHandOffPredecessorKilled(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	roles, pods := w.startLoops(ctx, t, "60s", "200ms", "team-hk")
	w.waitLoopsServed(ctx, t, roles)
	role := roles["team-hk"]
	before := w.upstreamCalls(t, pods)

	old := w.agentPod(ctx, t)
	pid := w.containerPID(ctx, t, old.Status.ContainerStatuses[0].ContainerID)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	start := time.Now()
	if _, err := w.node.CP.Kubectl(ctx, "-n", agentNS, "rollout", "restart", "daemonset/"+agentDS); err != nil {
		t.Fatal(err)
	}
	// The new agent is mid-hand-off when its connection waits in the
	// frozen agent's accept queue (an unaccepted UNIX connection shows as
	// state 02, SS_CONNECTING, under the name the listener was bound to:
	// the path plus the temporary suffix it was renamed from).
	if err := poll(ctx, time.Minute, "the new agent to connect to the frozen one", func() (bool, error) {
		return pendingHandoff(pid), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	connected := time.Since(start)
	if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	after := w.upstreamCalls(t, pods)
	failed := w.agentMetric(ctx, t, "credbroker_handoff_received_total", "failed") + w.agentMetric(ctx, t, "credbroker_handoff_received_total", "partial")
	complete := w.agentMetric(ctx, t, "credbroker_handoff_received_total", "complete")
	t.Logf("new agent connected %v after the restart; old agent killed; rollout complete after %v; upstream calls for the pod %v → %v",
		connected.Round(100*time.Millisecond), took.Round(100*time.Millisecond), before, after)
	if failed != 1 || complete != 0 {
		t.Errorf("the new agent's hand-offs: %v failed or partial, %v complete; want 1 and 0", failed, complete)
	}
	if after[0] <= before[0] || after[1] <= before[1] {
		t.Errorf("upstream calls for the pod %v → %v: the new agent did not prefetch it", before, after)
	}
	w.waitRounds(ctx, t, "team-hk", "loop", time.Now(), 5, roleName(role))
}

// pendingHandoff reports whether a connection waits, unaccepted, on the
// hand-off socket in the network namespace of process pid.
func pendingHandoff(pid int) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fl := strings.Fields(sc.Text())
		if len(fl) == 8 && fl[5] == "02" && strings.Contains(fl[7], "/handoff.sock") {
			return true
		}
	}
	return false
}

// upstreamCalls counts the STS calls and TokenRequests made for pods.
func (w *world) upstreamCalls(t *testing.T, pods map[string]*corev1.Pod) [2]int64 {
	t.Helper()
	var n [2]int64
	for _, p := range pods {
		n[0] += w.sts.PodCalls(string(p.UID))
		n[1] += int64(w.tokenRequests(t, string(p.UID)))
	}
	return n
}

// rolloutRestart restarts the DaemonSet and waits until the restarted
// template's pod is the only one and available.
func (w *world) rolloutRestart(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := w.node.CP.Kubectl(ctx, "-n", agentNS, "rollout", "restart", "daemonset/"+agentDS); err != nil {
		t.Fatal(err)
	}
	waitUpdated(ctx, t, w)
}

// waitUpdated waits until the DaemonSet's current template's pod is the
// only one and available.
func waitUpdated(ctx context.Context, t *testing.T, w *world) {
	t.Helper()
	c := w.node.CP.Client
	if err := poll(ctx, 2*time.Minute, "the rollout", func() (bool, error) {
		ds, err := c.AppsV1().DaemonSets(agentNS).Get(ctx, agentDS, metav1.GetOptions{})
		if err != nil || ds.Status.ObservedGeneration < ds.Generation {
			return false, nil
		}
		return ds.Status.UpdatedNumberScheduled == 1 && ds.Status.NumberAvailable == 1 && podCount(ctx, w) == 1, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// removeAgentArg removes the agent's arguments starting with prefix and
// waits for the rollout.
func (w *world) removeAgentArg(ctx context.Context, t *testing.T, prefix string) {
	t.Helper()
	ds, err := w.node.CP.Client.AppsV1().DaemonSets(agentNS).Get(ctx, agentDS, metav1.GetOptions{})
	if err != nil {
		t.Error(err)
		return
	}
	var ops []map[string]any
	args := ds.Spec.Template.Spec.Containers[0].Args
	for i := len(args) - 1; i >= 0; i-- {
		if strings.HasPrefix(args[i], prefix) {
			ops = append(ops, map[string]any{"op": "remove", "path": "/spec/template/spec/containers/0/args/" + strconv.Itoa(i)})
		}
	}
	if len(ops) == 0 {
		return
	}
	b, _ := json.Marshal(ops)
	if _, err := w.node.CP.Client.AppsV1().DaemonSets(agentNS).Patch(ctx, agentDS, types.JSONPatchType, b, metav1.PatchOptions{}); err != nil {
		t.Error(err)
		return
	}
	if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
		t.Error(err)
	}
}

// agentMetric reads one counter of the agent answering on the node's
// metrics port, by its result label (0 when absent).
func (w *world) agentMetric(ctx context.Context, t *testing.T, name, result string) float64 {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: w.node.NS.DialContext, DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:2705/metrics", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("scraping the agent's metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	prefix := name + `{result="` + result + `"} `
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}
