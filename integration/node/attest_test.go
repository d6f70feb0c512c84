//go:build integration

package node

// Attestation on the real node (issue 20): the API server's pod addresses
// are made to disagree with the data plane, and the agent, which the
// DaemonSet runs with --attest=netns and hostPID, must follow the kernel:
// a connection that does not come from the informer's pod's network
// namespace never gets that pod's credentials, and the pods themselves are
// never refused.
//
// The caller that holds another pod's address is an "impostor": a network
// namespace this test puts on the node's cni0 bridge (not a pod, so no pod's
// processes hold its sockets), from which the test binary dials the agent.
// CREDBROKER_NODE_ATTEST=off (world_test.go) runs the same tests against an
// agent with attestation off, to show what they catch.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/netns"
)

// attestMetric counts attested connections by result (pkg/attest).
const attestMetric = "credbroker_attest_total"

// impostor is a network namespace on the node's cni0 bridge holding an
// address, with a default route through the bridge's gateway: it reaches
// 169.254.170.23 as a pod would (shared notes/real-node.md).
type impostor struct {
	name string
	addr netip.Addr
	mac  string
	h    *netns.Handle
	// unplug deletes the bridge-side link at once: the namespace itself
	// lives on while anything (a closing socket) still refers to it.
	unplug func()
}

// newImpostor puts a namespace named name (also the bridge-side link's
// name, at most 15 bytes) on cni0 with addr. t's cleanup removes it.
func (w *world) newImpostor(ctx context.Context, t *testing.T, name string, addr netip.Addr) *impostor {
	t.Helper()
	removeNetns(name) // a leftover of a killed run
	run := func(cmd *exec.Cmd) string {
		t.Helper()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", cmd.Args, err, out)
		}
		return string(out)
	}
	run(exec.CommandContext(ctx, "ip", "netns", "add", name))
	im := &impostor{name: name, addr: addr, unplug: func() {
		_ = w.node.NSCommand(context.Background(), "ip", "link", "del", name).Run()
	}}
	t.Cleanup(im.close)
	// The pair is made in the node's namespace, where cni0 is; its inner
	// end moves to the impostor's namespace as eth0.
	run(w.node.NSCommand(ctx, "ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name))
	run(w.node.NSCommand(ctx, "ip", "link", "set", name, "master", "cni0", "up"))
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", fmt.Sprintf("%s/%d", addr, PodCIDR.Bits()), "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", "default", "via", PodGateway.String()},
	} {
		run(exec.CommandContext(ctx, "ip", append([]string{"-n", name}, args...)...))
	}
	f := strings.Fields(run(exec.CommandContext(ctx, "ip", "-n", name, "-o", "link", "show", "eth0")))
	for i := range f[:len(f)-1] {
		if f[i] == "link/ether" {
			im.mac = f[i+1]
		}
	}
	h, err := netns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	im.h = h
	return im
}

func (im *impostor) close() {
	im.unplug()
	if im.h != nil {
		_ = im.h.Close()
		im.h = nil
	}
	removeNetns(im.name)
}

// removeNetns deletes a named network namespace; the veth pair goes with
// its inner end.
func removeNetns(name string) {
	_ = exec.Command("ip", "netns", "del", name).Run()
}

// tally is what a series of requests got.
type tally struct {
	requests int
	byStatus map[int]int
	errors   int
	firstErr string
	// creds counts answers that carried credentials.
	creds int
	// took is how long each answered request took.
	took []time.Duration
	// owners counts the credentials served by the pod UID the STS issued
	// them for.
	owners map[string]int
}

func newTally() tally { return tally{byStatus: map[int]int{}, owners: map[string]int{}} }

func (t tally) String() string {
	var codes []int
	for c := range t.byStatus {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d×%d", t.byStatus[c], c))
	}
	s := fmt.Sprintf("%d requests: %s", t.requests, strings.Join(parts, " "))
	if t.errors > 0 {
		s += fmt.Sprintf(", %d without an answer (first: %s)", t.errors, t.firstErr)
	}
	if len(t.owners) > 0 {
		s += fmt.Sprintf(", credentials of pods %v", t.owners)
	}
	if len(t.took) > 0 {
		d := append([]time.Duration(nil), t.took...)
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		s += fmt.Sprintf(" (answered in median %v, max %v)", d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
	return s
}

func (t tally) answered() int { return t.requests - t.errors }

func (t *tally) add(o tally) {
	t.requests += o.requests
	t.errors += o.errors
	t.creds += o.creds
	t.took = append(t.took, o.took...)
	for u, n := range o.owners {
		t.owners[u] += n
	}
	if t.firstErr == "" {
		t.firstErr = o.firstErr
	}
	for c, n := range o.byStatus {
		t.byStatus[c] += n
	}
}

// dialFunc opens a connection as http.Transport.DialContext does.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// ask makes n credential requests from the impostor.
func (w *world) ask(ctx context.Context, im *impostor, n int, keepAlive bool) tally {
	return w.askFrom(ctx, im.h.DialContext, n, keepAlive)
}

// askFrom makes n credential requests through dial: each on a new
// connection, or all on one keep-alive connection. Credentials served are
// traced to the pod they were issued for by the STS.
func (w *world) askFrom(ctx context.Context, dial dialFunc, n int, keepAlive bool) tally {
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	res := newTally()
	for i := 0; i < n; i++ {
		res.requests++
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, credsURL, nil)
		sent := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			res.errors++
			if res.firstErr == "" {
				res.firstErr = err.Error()
			}
		} else {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			res.took = append(res.took, time.Since(sent))
			res.byStatus[resp.StatusCode]++
			var creds struct{ AccessKeyId, SecretAccessKey string }
			if json.Unmarshal(body, &creds) == nil && creds.SecretAccessKey != "" {
				res.creds++
				owner := "an unknown pod"
				if id, ok := w.sts.Lookup(creds.AccessKeyId); ok {
					owner = id.PodUID
				}
				res.owners[owner]++
			}
		}
		// Pacing: an impostor shares its victim's per-address request
		// budget (--pod-request-qps), which must not decide the outcome.
		time.Sleep(50 * time.Millisecond)
	}
	return res
}

// dialFromNS dials from the network namespace at nsPath with the local
// address local (one of the namespace's addresses, not necessarily the one
// its routes would pick).
func dialFromNS(nsPath string, local netip.Addr) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		h, err := netns.Open(nsPath)
		if err != nil {
			return nil, err
		}
		// The connection outlives the handle (see netns.Handle.Close).
		defer h.Close()
		return h.DialFrom(local)(ctx, network, addr)
	}
}

// attestCounts scrapes the agent's attestation counters by result.
func (w *world) attestCounts(ctx context.Context, t *testing.T) map[string]float64 {
	t.Helper()
	_, out, err := w.scrapeAttest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 && w.attestMode() == "netns" {
		t.Fatalf("no %s in the agent's metrics", attestMetric)
	}
	return out
}

// scrapeAttest returns the attestation counters of whichever agent answers
// on the node's metrics port (both do during a surge rollout), with that
// agent's process start time to tell them apart.
func (w *world) scrapeAttest(ctx context.Context) (started string, counts map[string]float64, err error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: w.node.NS.DialContext, DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:2705/metrics", nil)
	resp, err := c.Do(req)
	if err != nil {
		return "", nil, fmt.Errorf("scraping the agent's metrics: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	counts = map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "process_start_time_seconds "); ok {
			started = v
		}
		rest, ok := strings.CutPrefix(l, attestMetric+`{result="`)
		if !ok {
			continue
		}
		res, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			counts[res] = v
		}
	}
	return started, counts, nil
}

func delta(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

// podPIDs lists the processes of a pod: those in its cgroup (the kubelet's
// cgroupfs driver names it pod<UID>).
func podPIDs(uid string) []int {
	return processes(func(proc string) bool {
		cg, err := os.ReadFile(filepath.Join(proc, "cgroup"))
		return err == nil && strings.Contains(string(cg), "/pod"+uid+"/")
	})
}

// pauseKubelet stops the kubelet's process group with SIGSTOP: the API
// server keeps every pod's last status. The returned func (also run at
// cleanup) resumes it.
func (w *world) pauseKubelet(t *testing.T) (resume func()) {
	t.Helper()
	p := w.node.Process("kubelet")
	if p == nil {
		t.Fatal("no kubelet process")
	}
	pgid := p.Cmd.Process.Pid
	if err := syscall.Kill(-pgid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume = func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(-pgid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	return resume
}

// roundsSince counts the rounds of r made at or after since: with the own
// role, and the rest.
func roundsSince(r result, since time.Time, role string) (ok, other int) {
	for _, rl := range r.rounds {
		ts, _ := time.Parse(time.RFC3339Nano, rl.Time)
		if ts.Before(since) {
			continue
		}
		if roleOf(rl.Arn) == role {
			ok++
		} else {
			other++
		}
	}
	return ok, other
}

// rawRefusals counts the rounds whose plain request the agent answered
// with anything but 200 (not those that got no answer).
func rawRefusals(r result) (n int, codes map[int]int) {
	codes = map[int]int{}
	for _, rl := range r.rounds {
		if rl.RawStatus != 0 && rl.RawStatus != http.StatusOK {
			n++
			codes[rl.RawStatus]++
		}
	}
	return n, codes
}

// waitRounds waits until the pod's current container has printed n rounds
// at or after since, and returns its log.
func (w *world) waitRounds(ctx context.Context, t *testing.T, ns, name string, since time.Time, n int, role string) result {
	t.Helper()
	var r result
	if err := poll(ctx, 90*time.Second, fmt.Sprintf("%d rounds of %s/%s with its own role", n, ns, name), func() (bool, error) {
		var err error
		r, err = w.tryLogs(ctx, ns, name, false)
		if err != nil {
			return false, nil
		}
		ok, _ := roundsSince(r, since, role)
		return ok >= n, nil
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestAttestStaleStatus: pod A runs with a role; the kubelet is paused
// (SIGSTOP), so the API server keeps giving A's address X to A; A's
// containers are killed and its veth pair deleted, and a namespace on the
// bridge takes X. Its requests, on new and on keep-alive connections, never
// get credentials (the informer still names A for X). Pod B, of another
// role, is served throughout. After the kubelet resumes, A runs in a new
// sandbox and gets its own role again; the impostor still gets nothing.
func TestAttestStaleStatus(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	roleA := roleName(w.setupApp(ctx, t, "team-as", "app"))
	roleB := roleName(w.setupApp(ctx, t, "team-as2", "app"))
	loop := []string{"-duration", "600s", "-interval", "200ms"}
	w.createWorkload(ctx, t, workloadSpec{ns: "team-as", name: "a", sa: "app", restart: corev1.RestartPolicyAlways, args: loop})
	t.Cleanup(func() { w.deletePodAndWait(ctx, t, "team-as", "a") })
	w.createWorkload(ctx, t, workloadSpec{ns: "team-as2", name: "b", sa: "app", restart: corev1.RestartPolicyAlways, args: loop})
	t.Cleanup(func() { w.deletePodAndWait(ctx, t, "team-as2", "b") })
	pa := w.waitPhase(ctx, t, "team-as", "a", time.Minute, corev1.PodRunning)
	pb := w.waitPhase(ctx, t, "team-as2", "b", time.Minute, corev1.PodRunning)
	start := time.Now()
	w.waitRounds(ctx, t, "team-as", "a", start, 3, roleA)
	w.waitRounds(ctx, t, "team-as2", "b", start, 3, roleB)
	uidA := string(pa.UID)
	x := netip.MustParseAddr(pa.Status.PodIP)
	pause := pausePID(t, uidA)
	before := w.attestCounts(ctx, t)

	resume := w.pauseKubelet(t)
	stopped := time.Now()
	// A's veth pair, deleted from its inner end: X is free on the bridge.
	if out, err := exec.CommandContext(ctx, "nsenter", "--net=/proc/"+strconv.Itoa(pause)+"/ns/net", "--", "ip", "link", "del", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("deleting A's veth: %v: %s", err, out)
	}
	for _, pid := range podPIDs(uidA) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := poll(ctx, 10*time.Second, "A's processes to be gone", func() (bool, error) {
		return len(podPIDs(uidA)) == 0, nil
	}); err != nil {
		t.Fatal(err)
	}
	// The disagreement this test is about: the API server still gives X to
	// A, running.
	if p, err := c.CoreV1().Pods("team-as").Get(ctx, "a", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP != x.String() {
		t.Fatalf("with the kubelet paused, the API server should still show A Running at %s: %v %+v", x, err, p.Status)
	}
	im := w.newImpostor(ctx, t, "cbimp-stale", x)
	got := w.ask(ctx, im, 10, false)
	ka := w.ask(ctx, im, 10, true)
	got.add(ka)
	paused := time.Since(stopped)
	t.Logf("kubelet paused, A (%s) gone, the impostor on %s: %s (new connections and one keep-alive connection); kubelet paused %v",
		uidA, x, got, paused.Round(100*time.Millisecond))
	if got.byStatus[http.StatusOK] != 0 || got.creds != 0 {
		t.Errorf("the impostor on A's stale address got %d answers 200, %d with credentials (A's: %d): A'S CREDENTIALS TO ANOTHER NAMESPACE",
			got.byStatus[http.StatusOK], got.creds, got.owners[uidA])
	}
	if got.answered() < got.requests/2 {
		t.Errorf("the agent answered only %d of the impostor's %d requests: the scenario did not reach it", got.answered(), got.requests)
	}
	for code := range got.byStatus {
		if code != http.StatusServiceUnavailable && code != http.StatusForbidden && code != http.StatusOK {
			t.Errorf("the impostor got %d; want a retryable 503 (or 403)", code)
		}
	}
	mid := w.attestCounts(ctx, t)
	d := delta(before, mid)
	t.Logf("attestation while paused: %v", d)
	if d["refused"]+d["unavailable"] < 1 {
		t.Errorf("no connection refused by attestation: %v", d)
	}

	// Pod B takes X as a second address (as a pod with NET_ADMIN could) and
	// asks from it: the informer still names A for X, the kernel shows the
	// connection in B's namespace, so B gets its own role ("corrected").
	im.close()
	if out, err := w.node.NSCommand(ctx, "ip", "neigh", "del", x.String(), "dev", "cni0").CombinedOutput(); err != nil {
		t.Logf("deleting the impostor's neighbour entry: %v: %s", err, out)
	}
	nsB := fmt.Sprintf("/proc/%d/ns/net", pausePID(t, string(pb.UID)))
	if out, err := exec.CommandContext(ctx, "nsenter", "--net="+nsB, "--", "ip", "addr", "add", x.String()+"/32", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("adding %s to B: %v: %s", x, err, out)
	}
	corr := w.askFrom(ctx, dialFromNS(nsB, x), 5, false)
	if out, err := exec.CommandContext(ctx, "nsenter", "--net="+nsB, "--", "ip", "addr", "del", x.String()+"/32", "dev", "eth0").CombinedOutput(); err != nil {
		t.Errorf("removing %s from B: %v: %s", x, err, out)
	}
	dc := delta(mid, w.attestCounts(ctx, t))
	t.Logf("pod B asking from A's stale address %s: %s; attestation %v", x, corr, dc)
	if corr.owners[uidA] != 0 || corr.owners[string(pb.UID)] != corr.requests {
		t.Errorf("B on A's stale address: %s; want B's own credentials (pod %s) every time, never A's (pod %s)", corr, pb.UID, uidA)
	}
	if w.attestMode() == "netns" && dc["corrected"] < 1 {
		t.Errorf("no connection corrected: %v", dc)
	}

	resume()
	resumed := time.Now()
	var newIP string
	if err := poll(ctx, 90*time.Second, "A to run again in a new sandbox", func() (bool, error) {
		p, err := c.CoreV1().Pods("team-as").Get(ctx, "a", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, nil
		}
		cs := p.Status.ContainerStatuses[0]
		newIP = p.Status.PodIP
		return cs.RestartCount >= 1 && cs.State.Running != nil && newIP != "" && newIP != x.String(), nil
	}); err != nil {
		t.Fatal(err)
	}
	im = w.newImpostor(ctx, t, "cbimp-stale", x)
	after := w.ask(ctx, im, 3, false)
	t.Logf("kubelet resumed: A running again at %s after %v; the impostor on %s then: %s",
		newIP, time.Since(resumed).Round(100*time.Millisecond), x, after)
	if after.byStatus[http.StatusOK] != 0 || after.creds != 0 {
		t.Errorf("the impostor got credentials after the kubelet resumed: %s", after)
	}
	im.close()
	ra := w.waitRounds(ctx, t, "team-as", "a", resumed, 5, roleA)
	prevA := w.logs(ctx, t, "team-as", "a", true)
	rb := w.waitRounds(ctx, t, "team-as2", "b", resumed, 5, roleB)
	aOK, aFailed := checkOwn(t, "A in its new sandbox", ra, roleA)
	pOK, pFailed := checkOwn(t, "A before", prevA, roleA)
	bOK, bFailed := checkOwn(t, "B", rb, roleB)
	bRefused, bCodes := rawRefusals(rb)
	aRefused, aCodes := rawRefusals(ra)
	t.Logf("A before: %d own, %d failed; A after: %d own, %d failed, plain requests refused %d %v; B throughout: %d own, %d failed, plain requests refused %d %v",
		pOK, pFailed, aOK, aFailed, aRefused, aCodes, bOK, bFailed, bRefused, bCodes)
	if bRefused != 0 {
		t.Errorf("B, never touched, was refused %d times: %v", bRefused, bCodes)
	}
	t.Logf("attestation over the whole test: %v", delta(before, w.attestCounts(ctx, t)))
}

// startSteady sets up an application (ServiceAccount "app", its role) in
// ns and a workload name there that calls the SDK every 200 ms for ten
// minutes, restarted if it dies, deleted at the end of the test; it
// returns the role's name and the running pod.
func (w *world) startSteady(ctx context.Context, t *testing.T, ns, name string) (string, *corev1.Pod) {
	t.Helper()
	role := roleName(w.setupApp(ctx, t, ns, "app"))
	w.createWorkload(ctx, t, workloadSpec{ns: ns, name: name, sa: "app", restart: corev1.RestartPolicyAlways,
		args: []string{"-duration", "600s", "-interval", "200ms"}})
	t.Cleanup(func() { w.deletePodAndWait(ctx, t, ns, name) })
	return role, w.waitPhase(ctx, t, ns, name, time.Minute, corev1.PodRunning)
}

// TestAttestDuplicateAddress: while pod A runs, a namespace on the bridge
// takes A's address too (the node's neighbour entry for it moves to the
// newer MAC, so the agent's answers reach the impostor). The impostor never
// gets credentials; once it is gone and the neighbour entry deleted, A gets
// its own role again, and the agent never refused A.
func TestAttestDuplicateAddress(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	role, pa := w.startSteady(ctx, t, "team-ad", "a")
	start := time.Now()
	w.waitRounds(ctx, t, "team-ad", "a", start, 3, role)
	x := netip.MustParseAddr(pa.Status.PodIP)
	before := w.attestCounts(ctx, t)

	dupAt := time.Now()
	im := w.newImpostor(ctx, t, "cbimp-dup", x)
	got := w.ask(ctx, im, 10, false)
	got.add(w.ask(ctx, im, 10, true))
	neigh, _ := w.node.NSCommand(ctx, "ip", "neigh", "show", x.String(), "dev", "cni0").CombinedOutput()
	t.Logf("duplicate of A's %s (impostor MAC %s; the node's neighbour entry: %s): %s",
		x, im.mac, strings.TrimSpace(string(neigh)), got)
	if got.byStatus[http.StatusOK] != 0 || got.creds != 0 {
		t.Errorf("the duplicate got %d answers 200, %d with credentials: A'S CREDENTIALS TO ANOTHER NAMESPACE", got.byStatus[http.StatusOK], got.creds)
	}
	if got.answered() < got.requests/2 {
		t.Errorf("the agent answered only %d of the duplicate's %d requests: the scenario did not reach it", got.answered(), got.requests)
	}
	// Both on the bridge at once while A goes on asking: A's rounds started
	// during the duplicate, then the impostor again.
	if err := poll(ctx, time.Minute, "3 rounds of A started beside the duplicate", func() (bool, error) {
		r, err := w.tryLogs(ctx, "team-ad", "a", false)
		if err != nil {
			return false, nil
		}
		ok, other := roundsSince(r, dupAt, role)
		return ok+other >= 3, nil
	}); err != nil {
		t.Fatal(err)
	}
	again := w.ask(ctx, im, 10, false)
	t.Logf("the duplicate again, after A's rounds beside it: %s", again)
	if again.byStatus[http.StatusOK] != 0 || again.creds != 0 {
		t.Errorf("the duplicate got credentials: %s", again)
	}
	mid := w.attestCounts(ctx, t)
	t.Logf("attestation with the duplicate: %v", delta(before, mid))

	im.close()
	if out, err := w.node.NSCommand(ctx, "ip", "neigh", "del", x.String(), "dev", "cni0").CombinedOutput(); err != nil {
		t.Logf("deleting the neighbour entry: %v: %s", err, out)
	}
	restored := time.Now()
	r := w.waitRounds(ctx, t, "team-ad", "a", restored, 5, role)
	ok, failed := checkOwn(t, "A", r, role)
	refused, codes := rawRefusals(r)
	var during, duringOK int
	for _, rl := range r.rounds {
		ts, _ := time.Parse(time.RFC3339Nano, rl.Time)
		if !ts.Before(dupAt) && ts.Before(restored) {
			during++
			if rl.Arn != "" {
				duringOK++
			}
		}
	}
	t.Logf("A: %d rounds own role, %d failed (%d rounds while the duplicate was up, %d of them own role); plain requests the agent refused: %d %v; back to its own role %v after the duplicate went",
		ok, failed, during, duringOK, refused, codes, firstOKAfter(r, restored, role).Round(10*time.Millisecond))
	if refused != 0 {
		t.Errorf("the agent refused A's own requests %d times: %v", refused, codes)
	}
	p, err := c.CoreV1().Pods("team-ad").Get(ctx, "a", metav1.GetOptions{})
	if err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("A restarted during the test: %+v", p.Status.ContainerStatuses[0])
	}
}

// firstOKAfter is how long after since the first round with role came.
func firstOKAfter(r result, since time.Time, role string) time.Duration {
	for _, rl := range r.rounds {
		ts, _ := time.Parse(time.RFC3339Nano, rl.Time)
		if !ts.Before(since) && roleOf(rl.Arn) == role {
			return ts.Sub(since)
		}
	}
	return -1
}

// TestAttestNoFalseRefusals: a pod looping SDK calls lives through a
// container restart (its process killed), a sandbox recreation (its pause
// process killed: new sandbox, new address) and a rollout restart of the
// agent. Every request it makes is counted; the agent must refuse none of
// them, and attestation must refuse or fail none of its connections.
func TestAttestNoFalseRefusals(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	c := w.node.CP.Client
	role, p := w.startSteady(ctx, t, "team-af", "steady")
	w.waitRounds(ctx, t, "team-af", "steady", time.Now(), 5, role)
	uid := string(p.UID)

	type phase struct {
		name           string
		rounds, ok     int
		sdkFailed      int
		refused        int
		codes          map[int]int
		noAnswer       int
		attest         map[string]float64
		recoveredAfter time.Duration
	}
	var phases []phase
	total := phase{name: "total", codes: map[int]int{}, attest: map[string]float64{}, recoveredAfter: -1}
	record := func(name string, r result, attest map[string]float64, rec time.Duration) {
		t.Helper()
		ph := phase{name: name, rounds: len(r.rounds), attest: attest, recoveredAfter: rec}
		ph.ok, ph.sdkFailed = checkOwn(t, name, r, role)
		ph.refused, ph.codes = rawRefusals(r)
		for _, rl := range r.rounds {
			if rl.RawStatus == 0 {
				ph.noAnswer++
			}
		}
		phases = append(phases, ph)
		total.rounds += ph.rounds
		total.ok += ph.ok
		total.sdkFailed += ph.sdkFailed
		total.refused += ph.refused
		total.noAnswer += ph.noAnswer
		for k, v := range ph.codes {
			total.codes[k] += v
		}
		for k, v := range attest {
			total.attest[k] += v
		}
	}
	restarts := func() int32 {
		p, err := c.CoreV1().Pods("team-af").Get(ctx, "steady", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return -1
		}
		return p.Status.ContainerStatuses[0].RestartCount
	}
	// restartedAndRunning waits for the container's restart count to reach
	// n with the new container running and 5 rounds made, and returns the
	// previous container's log.
	restartedAndRunning := func(what string, n int32, since time.Time) (result, time.Duration) {
		t.Helper()
		if err := poll(ctx, 90*time.Second, what, func() (bool, error) {
			p, err := c.CoreV1().Pods("team-af").Get(ctx, "steady", metav1.GetOptions{})
			if err != nil || len(p.Status.ContainerStatuses) != 1 {
				return false, nil
			}
			cs := p.Status.ContainerStatuses[0]
			return cs.RestartCount >= n && cs.State.Running != nil && p.Status.PodIP != "", nil
		}); err != nil {
			t.Fatal(err)
		}
		cur := w.waitRounds(ctx, t, "team-af", "steady", since, 5, role)
		var prev result
		if err := poll(ctx, 30*time.Second, "the previous container's log", func() (bool, error) {
			var err error
			prev, err = w.tryLogs(ctx, "team-af", "steady", true)
			return err == nil, nil
		}); err != nil {
			t.Fatal(err)
		}
		return prev, firstOKAfter(cur, since, role)
	}

	// 1. The container's process killed: the kubelet restarts it in the
	// same sandbox.
	before := w.attestCounts(ctx, t)
	cid := p.Status.ContainerStatuses[0].ContainerID
	killed := time.Now()
	if err := syscall.Kill(w.containerPID(ctx, t, cid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	prev, rec := restartedAndRunning("the container to restart", restarts()+1, killed)
	after := w.attestCounts(ctx, t)
	record("until the container's process is killed", prev, delta(before, after), rec)

	// 2. The sandbox's pause process killed: a new sandbox, a new address.
	before = after
	n := restarts()
	oldIP := p.Status.PodIP
	killed = time.Now()
	if err := syscall.Kill(pausePID(t, uid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	prev, rec = restartedAndRunning("the pod to run in a new sandbox", n+1, killed)
	after = w.attestCounts(ctx, t)
	record("restarted container, until the sandbox's pause process is killed", prev, delta(before, after), rec)
	p, _ = c.CoreV1().Pods("team-af").Get(ctx, "steady", metav1.GetOptions{})
	t.Logf("sandbox recreated: %s → %s", oldIP, p.Status.PodIP)

	// 3. A rollout restart of the agent. Both agents answer on the metrics
	// port during the surge; the counters are scraped throughout and kept
	// per agent (by process start time), so the old agent's count is its
	// last scrape's, less what it had counted before this phase.
	oldStart, before, err := w.scrapeAttest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldAgent := w.agentPod(ctx, t).Name
	restarted := time.Now()
	if _, err := w.node.CP.Kubectl(ctx, "-n", agentNS, "rollout", "restart", "daemonset/"+agentDS); err != nil {
		t.Fatal(err)
	}
	lastSeen := map[string]map[string]float64{oldStart: before}
	if err := poll(ctx, 2*time.Minute, "the restarted rollout", func() (bool, error) {
		if started, counts, err := w.scrapeAttest(ctx); err == nil && started != "" {
			lastSeen[started] = counts
		}
		ds, err := c.AppsV1().DaemonSets(agentNS).Get(ctx, agentDS, metav1.GetOptions{})
		if err != nil || ds.Status.ObservedGeneration < ds.Generation {
			return false, nil
		}
		l, err := c.CoreV1().Pods(agentNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=credbroker-agent"})
		return err == nil && len(l.Items) == 1 && l.Items[0].Name != oldAgent &&
			ds.Status.UpdatedNumberScheduled == 1 && ds.Status.NumberAvailable == 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	rolled := time.Since(restarted)
	cur := w.waitRounds(ctx, t, "team-af", "steady", time.Now(), 10, role)
	newStart, counts, err := w.scrapeAttest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lastSeen[newStart] = counts
	rollout := map[string]float64{}
	for started, counts := range lastSeen {
		base := map[string]float64{}
		if started == oldStart {
			base = before
		}
		for k, v := range delta(base, counts) {
			rollout[k] += v
		}
	}
	record("new sandbox, through the agent's rollout restart", cur, rollout, -1)
	t.Logf("rollout restart complete in %v; agents seen on the metrics port: %d", rolled.Round(100*time.Millisecond), len(lastSeen))

	for _, ph := range append(phases, total) {
		rec := "-"
		if ph.recoveredAfter >= 0 {
			rec = ph.recoveredAfter.Round(10 * time.Millisecond).String()
		}
		t.Logf("%s: %d rounds (%d SDK calls own role, %d failed); plain requests refused %d %v, without an answer %d; attestation %v; own role again %s after the event that ended it",
			ph.name, ph.rounds, ph.ok, ph.sdkFailed, ph.refused, ph.codes, ph.noAnswer, ph.attest, rec)
	}
	if wrong := total.refused + int(total.attest["refused"]+total.attest["unavailable"]); wrong != 0 {
		t.Errorf("wrongly refused: %d plain requests answered %v, attestation refused %v and unavailable %v connections; want 0",
			total.refused, total.codes, total.attest["refused"], total.attest["unavailable"])
	}
	if total.sdkFailed != 0 {
		t.Errorf("%d SDK calls failed", total.sdkFailed)
	}
	if w.attestMode() == "netns" && total.attest["attested"] < 1 {
		t.Errorf("no connection attested: %v", total.attest)
	}
}

// TestAttestPrivileges: in netns mode the agent's pod shares the host PID
// namespace and nothing else changed: the agent process runs as UID and GID
// 64023 with only NET_BIND_SERVICE (0x400) effective, permitted and in its
// bounding set, no ambient or inheritable capability, no_new_privs; and it
// attests connections.
func TestAttestPrivileges(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	pod := w.agentPod(ctx, t)
	if !pod.Spec.HostPID {
		t.Errorf("the agent pod does not have hostPID")
	}
	var args []string
	for _, c := range pod.Spec.Containers {
		if c.Name == "agent" {
			args = c.Args
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 1 || sc.Capabilities.Add[0] != "NET_BIND_SERVICE" ||
				sc.Privileged != nil && *sc.Privileged {
				t.Errorf("agent securityContext: %+v", sc)
			}
		}
	}
	if !strings.Contains(strings.Join(args, " "), "--attest=netns") {
		t.Errorf("agent args %v lack --attest=netns", args)
	}
	pid, fields := w.containerStatus(ctx, t, pod.Status.ContainerStatuses[0].ContainerID)
	for _, k := range []string{"Uid", "Gid"} {
		for _, id := range strings.Fields(fields[k]) {
			if id != "64023" {
				t.Errorf("agent %s %q, want 64023 throughout", k, fields[k])
				break
			}
		}
	}
	want := map[string]string{"CapEff": "0000000000000400", "CapPrm": "0000000000000400", "CapBnd": "0000000000000400",
		"CapInh": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("agent %s = %s, want %s", k, fields[k], v)
		}
	}
	// The host PID namespace: the agent's NSpid has one level, and its
	// namespace is the kubelet's (this machine's init may hide its own).
	hostNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", w.node.Process("kubelet").Cmd.Process.Pid))
	agentNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if hostNS == "" || hostNS != agentNS || len(strings.Fields(fields["NSpid"])) != 1 {
		t.Errorf("agent PID namespace %s (NSpid %s), host's %s", agentNS, fields["NSpid"], hostNS)
	}
	t.Logf("agent pid %d: Uid %s, Gid %s, CapEff %s, CapPrm %s, CapBnd %s, CapAmb %s, NoNewPrivs %s, PID namespace %s (the kubelet's)",
		pid, fields["Uid"], fields["Gid"], fields["CapEff"], fields["CapPrm"], fields["CapBnd"], fields["CapAmb"], fields["NoNewPrivs"], agentNS)

	// It attests: one workload request adds one attested connection.
	role := roleName(w.setupApp(ctx, t, "team-ap", "app"))
	before := w.attestCounts(ctx, t)
	w.createWorkload(ctx, t, workloadSpec{ns: "team-ap", name: "once", sa: "app", args: []string{"-rounds", "1"}})
	t.Cleanup(func() { w.deletePodAndWait(ctx, t, "team-ap", "once") })
	w.waitPhase(ctx, t, "team-ap", "once", 90*time.Second, corev1.PodSucceeded, corev1.PodFailed)
	if ok, _ := checkOwn(t, "once", w.logs(ctx, t, "team-ap", "once", false), role); ok != 1 {
		t.Errorf("the workload did not get its own role")
	}
	d := delta(before, w.attestCounts(ctx, t))
	t.Logf("one workload round (an SDK call and a plain request): attestation %v", d)
	if d["attested"] < 1 || d["refused"]+d["unavailable"]+d["corrected"] != 0 {
		t.Errorf("attestation counts for one workload: %v", d)
	}
}
