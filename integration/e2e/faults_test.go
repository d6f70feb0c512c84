//go:build integration

package e2e

// Faults on a real control plane, with figures (issue 8): IP reuse under
// churn, a pod's sandbox recreated and two pods swapping addresses, an STS
// outage longer than a session, and the API server frozen then killed.
// Every scenario runs its own agent on one shared control plane and STS;
// the API-server scenario, the most disruptive, runs last. Each logs a
// "figures:" line; docs/security.md ("Faults on a real control plane")
// quotes them.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
)

const (
	faultPrefix = "cbflt"       // network namespaces of this file
	faultSubnet = "10.244.2.%d" // this file's /24
	// faultRequestTimeout is the agent's --request-timeout in these tests:
	// no request may wait longer than this in total.
	faultRequestTimeout = 5 * time.Second
	// latencySlack covers what the agent does not control: scheduling on a
	// busy 2-core machine, the dial from inside the namespace.
	latencySlack = 500 * time.Millisecond
	// cachedLatencyLimit is what a cached pod may wait: the JavaScript and
	// Java SDKs give up on the credentials endpoint after one second.
	cachedLatencyLimit = time.Second
	// askerTimeout is the clients' own timeout, well above the agent's, so
	// that a request hanging in the agent is measured, not cut short.
	askerTimeout = 15 * time.Second
)

// faults is what the scenarios share: the suite's control plane, STS and
// kubeconfig (no pods and no agent: each scenario starts its own).
type faults struct {
	*suite
}

func TestFaults(t *testing.T) {
	f := &faults{suite: newSuite(t, faultSubnet, "ip", "kubectl")}
	ctx := context.Background()
	if err := netns.Cleanup(ctx, faultPrefix); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Cleanup(context.Background(), faultPrefix); err != nil {
			t.Errorf("removing namespaces: %v", err)
		}
	})
	f.startCluster(t)
	// The API-server scenario freezes it; never leave it stopped.
	t.Cleanup(func() { _ = f.cp.ThawAPIServer() })

	t.Run("IPReuseChurn", f.testChurn)
	t.Run("SandboxRecreatedAndSwap", f.testSandbox)
	t.Run("STSOutageLongerThanSession", f.testSTSOutage)
	t.Run("APIServerFrozenThenKilled", f.testAPIServerOutage)
}

// startAgent starts an agent of its own for one scenario, on a free port of
// the service address, with pprof on (for the goroutine profile).
func (f *faults) startAgent(t *testing.T, name string, extra ...string) *harness.Agent {
	t.Helper()
	args := append([]string{"--request-timeout=" + faultRequestTimeout.String(), "--enable-pprof"}, extra...)
	args = append(args, strings.Fields(os.Getenv("CREDBROKER_E2E_AGENT_ARGS"))...)
	a, err := harness.StartAgent(context.Background(), harness.AgentConfig{
		Binary:      f.agentBin,
		Dir:         f.dir,
		Name:        name,
		Kubeconfig:  f.kc,
		NodeName:    node,
		Listen:      net.JoinHostPort(netns.ServiceAddr4.String(), "0"),
		STSEndpoint: f.sts.URL(),
		LogLevel:    "info",
		ExtraArgs:   args,
	})
	if err != nil {
		t.Fatalf("StartAgent: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log tail:\n%s", name, a.LogTail(30))
		}
		a.Stop()
	})
	return a
}

// world gives a scenario the e2e suite's helpers (serviceAccount, identity,
// fetchUntil200) against its own agent.
func (f *faults) world(a *harness.Agent) *world {
	return &world{suite: &suite{root: f.root, dir: f.dir, cp: f.cp, sts: f.sts, agent: a, kc: f.kc}}
}

// addr is this file's pod address n.
func faultAddr(n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf(faultSubnet, n)) }

// netns makes a network namespace carrying addr: a pod sandbox, whichever
// API pod owns the address at the time.
func (f *faults) netns(t *testing.T, name string, addr netip.Addr) *netns.Namespace {
	t.Helper()
	ns, err := netns.Create(context.Background(), netns.Spec{Name: faultPrefix + "-" + name, IP: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// answer is one request to the agent and what came back.
type answer struct {
	sent, got  time.Time
	status     int // 0: no HTTP answer (err)
	retryAfter string
	code       string // the error body's code
	keyID      string // AccessKeyId of a 200
	expiration time.Time
	err        error
}

func (a answer) latency() time.Duration { return a.got.Sub(a.sent) }

// retryable reports whether the answer is one the caller contract calls
// retryable: 503 or 429, with a Retry-After and a JSON error code.
func (a answer) retryable() bool {
	if a.status != http.StatusServiceUnavailable && a.status != http.StatusTooManyRequests {
		return false
	}
	n, err := strconv.Atoi(a.retryAfter)
	return err == nil && n > 0 && a.code != ""
}

func (a answer) String() string {
	if a.err != nil {
		return fmt.Sprintf("error after %v: %v", a.latency().Round(time.Millisecond), a.err)
	}
	return fmt.Sprintf("%d %s (Retry-After %q) after %v", a.status, a.code, a.retryAfter, a.latency().Round(time.Millisecond))
}

// asker requests credentials from inside one network namespace as an SDK
// does: a new connection for every request.
type asker struct {
	client *http.Client
	url    string
}

func newAsker(ns *netns.Namespace, url string) *asker {
	return &asker{
		client: &http.Client{Timeout: askerTimeout, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}},
		url:    url,
	}
}

func (k *asker) ask() answer {
	a := answer{sent: time.Now()}
	req, err := http.NewRequest(http.MethodGet, k.url, nil)
	if err != nil {
		a.err = err
		a.got = time.Now()
		return a
	}
	resp, err := k.client.Do(req)
	if err != nil {
		a.err = err
		a.got = time.Now()
		return a
	}
	body, err := readAll(resp.Body)
	resp.Body.Close()
	a.got = time.Now()
	a.status = resp.StatusCode
	a.retryAfter = resp.Header.Get("Retry-After")
	if err != nil {
		a.err = err
		return a
	}
	if a.status != http.StatusOK {
		var e apiError
		if json.Unmarshal(body, &e) == nil {
			a.code = e.Code
		}
		return a
	}
	var c creds
	if err := json.Unmarshal(body, &c); err != nil {
		a.err = fmt.Errorf("decoding a 200: %w", err)
		return a
	}
	a.keyID = c.AccessKeyID
	if a.expiration, err = time.Parse(time.RFC3339, c.Expiration); err != nil {
		a.err = fmt.Errorf("Expiration %q: %w", c.Expiration, err)
	}
	return a
}

// loop asks every pause until stop is closed or max requests were made,
// calling each with every answer. It runs on the caller's goroutine.
func (k *asker) loop(stop <-chan struct{}, pause time.Duration, max int, each func(answer)) {
	for i := 0; i < max; i++ {
		select {
		case <-stop:
			return
		default:
		}
		each(k.ask())
		select {
		case <-stop:
			return
		case <-time.After(pause):
		}
	}
}

// untilOK asks every 100 ms until a 200 or d passed, and returns the last
// answer.
func (k *asker) untilOK(d time.Duration) (answer, bool) {
	start := time.Now()
	for {
		an := k.ask()
		if an.status == http.StatusOK {
			return an, true
		}
		if time.Since(start) > d {
			return an, false
		}
		waitFor(context.Background(), 100*time.Millisecond)
	}
}

// tally sums up answers.
type tally struct {
	n, ok, unavailable, throttled, other, transport int
	notRetryable                                    int // 503/429 without Retry-After or code
	latencies                                       []time.Duration
}

func (t *tally) add(a answer) {
	t.n++
	t.latencies = append(t.latencies, a.latency())
	switch {
	case a.err != nil:
		t.transport++
	case a.status == http.StatusOK:
		t.ok++
	case a.status == http.StatusServiceUnavailable:
		t.unavailable++
	case a.status == http.StatusTooManyRequests:
		t.throttled++
	default:
		t.other++
	}
	if a.err == nil && (a.status == http.StatusServiceUnavailable || a.status == http.StatusTooManyRequests) && !a.retryable() {
		t.notRetryable++
	}
}

func (t *tally) quantile(q float64) time.Duration {
	if len(t.latencies) == 0 {
		return 0
	}
	s := slices.Clone(t.latencies)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

func (t *tally) max() time.Duration { return t.quantile(1) }

func (t *tally) String() string {
	return fmt.Sprintf("%d requests: %d ok, %d 503, %d 429, %d other, %d transport errors; latency p50 %v p99 %v max %v",
		t.n, t.ok, t.unavailable, t.throttled, t.other, t.transport,
		t.quantile(0.5).Round(100*time.Microsecond), t.quantile(0.99).Round(time.Millisecond), t.max().Round(time.Millisecond))
}

// waitFor runs a wall-clock phase of a scenario: it returns after d, or
// early if ctx ends.
func waitFor(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// ---------------------------------------------------------------------------
// IP reuse under churn

// tenure is one pod's time on an address in the churn.
type tenure struct {
	name, sa, role string
	uid            types.UID
	// start is when its creation began; left is when the call that ended
	// it (delete, phase Succeeded, or graceful delete) returned.
	start, left time.Time
	served      chan struct{} // closed at the first 200 with its identity
	once        sync.Once
}

func (te *tenure) markServed() { te.once.Do(func() { close(te.served) }) }

// Pods are deleted and recreated on the same addresses under different
// ServiceAccounts and roles as fast as the agent serves them, while a client
// in each address's namespace asks all the time. Every 200 is traced, through
// the access key, to the pod and role the STS issued it for, and that pod
// must have owned the address while the request was in flight. A pod
// leaves its address in one of three ways, rotating: deleted at once,
// finished (phase Succeeded, the object kept with its address, as Job pods
// are), or deleted gracefully (deletionTimestamp set, the object kept). The
// next pod takes the address after a short gap, as a kubelet's sandbox
// teardown and the CNI's address release leave one.
func (f *faults) testChurn(t *testing.T) {
	const (
		addrs          = 8
		clientsPerAddr = 2
		roles          = 4
		ns             = "churn"
		duration       = 60 * time.Second
		maxCycles      = 20000
		servedWait     = 3 * time.Second        // a pod not served by then is left unserved
		gap            = 200 * time.Millisecond // between one owner leaving and the next arriving
		pause          = 20 * time.Millisecond  // between one client's requests
	)
	a := f.startAgent(t, "agent-churn")
	w := f.world(a)
	ctx := context.Background()
	for r := range roles {
		w.serviceAccount(t, ns, fmt.Sprintf("sa-%d", r), fmt.Sprintf("churn-%d", r))
	}
	stsBefore := f.sts.Counts()

	owners := make([][]*tenure, addrs) // per address, in order; written by its driver only
	current := make([]atomic.Pointer[tenure], addrs)
	answers := make([][]answer, addrs) // per address; guarded by answersMu
	driverErr := make([]error, addrs)
	stop := make(chan struct{})
	deadline := time.Now().Add(duration)
	var clients, drivers sync.WaitGroup
	var answersMu sync.Mutex
	for i := range addrs {
		k := newAsker(f.netns(t, "c"+strconv.Itoa(i), faultAddr(10+i)), a.URL)
		// Two clients per address: while one waits in the gap for the next
		// pod, the other keeps hitting the current pod's cached credential.
		for range clientsPerAddr {
			clients.Go(func() {
				k.loop(stop, pause, 1_000_000, func(an answer) {
					answersMu.Lock()
					answers[i] = append(answers[i], an)
					answersMu.Unlock()
					if an.status != http.StatusOK || an.keyID == "" {
						return
					}
					if id, ok := f.sts.Lookup(an.keyID); ok {
						if cur := current[i].Load(); cur != nil && string(cur.uid) == id.PodUID {
							cur.markServed()
						}
					}
				})
			})
		}
	}
	for i := range addrs {
		drivers.Go(func() {
			ip := faultAddr(10 + i)
			var lingering []string // pod objects kept in the API after they left
			for cycle := 0; cycle < maxCycles && time.Now().Before(deadline); cycle++ {
				r := (i + cycle) % roles
				te := &tenure{name: fmt.Sprintf("a%d-%d", i, cycle), sa: fmt.Sprintf("sa-%d", r), role: fmt.Sprintf("churn-%d", r),
					served: make(chan struct{})}
				te.start = time.Now()
				pod, err := f.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: te.name, ServiceAccount: te.sa, NodeName: node, IP: ip})
				if err != nil {
					driverErr[i] = err
					return
				}
				te.uid = pod.UID
				owners[i] = append(owners[i], te)
				current[i].Store(te)
				select {
				case <-te.served:
				case <-time.After(servedWait):
				}
				// Let a few more requests hit the cached credential.
				waitFor(ctx, time.Duration(rand.IntN(100))*time.Millisecond)
				switch cycle % 3 {
				case 0:
					err = f.cp.DeletePod(ctx, ns, te.name)
				case 1:
					_, err = f.cp.SetPodPhase(ctx, ns, te.name, corev1.PodSucceeded)
					lingering = append(lingering, te.name)
				case 2:
					// A pod is served through its grace period (invariant
					// 12); its address goes to another pod only once its
					// sandbox is gone, and the kubelet writes the terminal
					// phase when its containers have exited.
					err = f.cp.BeginDeletePod(ctx, ns, te.name, 30)
					if err == nil {
						_, err = f.cp.SetPodPhase(ctx, ns, te.name, corev1.PodSucceeded)
					}
					lingering = append(lingering, te.name)
				}
				te.left = time.Now()
				current[i].Store(nil)
				if err != nil {
					driverErr[i] = err
					return
				}
				// Objects kept from before the previous cycle go now, while
				// a newer pod sits on their address.
				for len(lingering) > 1 {
					if err := f.cp.DeletePod(ctx, ns, lingering[0]); err != nil {
						driverErr[i] = err
						return
					}
					lingering = lingering[1:]
				}
				waitFor(ctx, gap)
			}
			for _, name := range lingering {
				_ = f.cp.DeletePod(ctx, ns, name)
			}
		})
	}
	drivers.Wait()
	close(stop)
	clients.Wait()
	for i, err := range driverErr {
		if err != nil {
			t.Errorf("driver of address %d: %v", i, err)
		}
	}

	// Judge every answer against the owners of its address.
	var (
		all                 tally
		wrong               []string
		wrongCount          int
		cycles, served      int
		afterLeft           int
		maxAfterLeft        time.Duration
		notRetryable, other []string
		unexpired           = true
	)
	for i := range addrs {
		byUID := map[string]int{}
		for k, te := range owners[i] {
			byUID[string(te.uid)] = k
			cycles++
			select {
			case <-te.served:
				served++
			default:
			}
		}
		for _, an := range answers[i] {
			all.add(an)
			switch {
			case an.err != nil:
				if len(other) < 5 {
					other = append(other, fmt.Sprintf("address %d: %v", i, an))
				}
				continue
			case an.status == http.StatusOK:
			case an.status == http.StatusServiceUnavailable || an.status == http.StatusTooManyRequests:
				if !an.retryable() && len(notRetryable) < 5 {
					notRetryable = append(notRetryable, an.String())
				}
				continue
			default:
				if len(other) < 5 {
					other = append(other, fmt.Sprintf("address %d: %v", i, an))
				}
				continue
			}
			if !an.expiration.After(an.got) {
				unexpired = false
			}
			bad := func(format string, args ...any) {
				wrongCount++
				if len(wrong) < 10 {
					wrong = append(wrong, fmt.Sprintf("address %s, request sent %s: ", faultAddr(10+i), an.sent.Format("15:04:05.000"))+fmt.Sprintf(format, args...))
				}
			}
			id, ok := f.sts.Lookup(an.keyID)
			if !ok {
				bad("access key %s was not issued by the STS", an.keyID)
				continue
			}
			k, ok := byUID[id.PodUID]
			if !ok {
				bad("credentials of pod %s, which never had this address", id.PodUID)
				continue
			}
			te := owners[i][k]
			if id.RoleArn != roleARN(te.role) || id.Subject != "system:serviceaccount:"+ns+":"+te.sa {
				bad("pod %s got role %s as %s, want %s as %s", te.name, id.RoleArn, id.Subject, te.role, te.sa)
			}
			// The pod must have owned the address at some moment while the
			// request was in flight: after its creation began and before the
			// next owner's did.
			if an.got.Before(te.start) {
				bad("answered with pod %s before it was created", te.name)
			}
			if k+1 < len(owners[i]) && !an.sent.Before(owners[i][k+1].start) {
				bad("answered with pod %s after pod %s took the address (%v later)", te.name, owners[i][k+1].name, an.sent.Sub(owners[i][k+1].start))
			}
			if !te.left.IsZero() && an.sent.After(te.left) {
				afterLeft++
				maxAfterLeft = max(maxAfterLeft, an.sent.Sub(te.left))
			}
		}
	}
	stsCalls := f.sts.Counts().AssumeRole - stsBefore.AssumeRole
	trs, err := f.cp.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	tokenRequests := 0
	for _, tr := range trs {
		if tr.Namespace == ns {
			tokenRequests++
		}
	}
	t.Logf("figures: %d addresses, %v, %d cycles (%d pods served at least once), %s; wrong-pod answers %d; "+
		"answers for a pod in the gap after it left: %d (max %v after); STS calls %d (%.2f per pod), TokenRequests %d",
		addrs, duration, cycles, served, all.String(), wrongCount, afterLeft, maxAfterLeft.Round(time.Millisecond),
		stsCalls, float64(stsCalls)/float64(max(cycles, 1)), tokenRequests)

	if wrongCount > 0 {
		t.Errorf("%d answers with credentials of a pod that did not own the address:\n%s", wrongCount, strings.Join(wrong, "\n"))
	}
	if !unexpired {
		t.Errorf("an expired credential was served")
	}
	if cycles < 100 {
		t.Errorf("only %d cycles in %v: the churn did not run", cycles, duration)
	}
	if served < cycles*9/10 {
		t.Errorf("only %d of %d pods were served within %v of their creation", served, cycles, servedWait)
	}
	if all.transport > 0 || all.other > 0 {
		t.Errorf("%d transport errors and %d non-retryable answers (want 0), e.g.:\n%s", all.transport, all.other, strings.Join(other, "\n"))
	}
	if len(notRetryable) > 0 {
		t.Errorf("503/429 without Retry-After or error code: %s", strings.Join(notRetryable, "; "))
	}
	if m := all.max(); m > faultRequestTimeout+latencySlack {
		t.Errorf("slowest request took %v; no request may wait longer than the agent's %v request timeout", m, faultRequestTimeout)
	}
}

// ---------------------------------------------------------------------------
// A pod's sandbox recreated, two pods swapping addresses

// The kubelet recreates a pod's sandbox (node reboot, pause container
// crash): same UID, its addresses cleared and then set again, to the same
// address or a new one. Two live pods swap addresses, their statuses
// updated one at a time. Each time, through the real informer and
// resolver, the pod is served again from its address, with its own
// identity, from the cache (not one upstream call per request), and never
// from an address it left.
func (f *faults) testSandbox(t *testing.T) {
	const ns = "sandbox"
	a := f.startAgent(t, "agent-sandbox")
	w := f.world(a)
	ctx := context.Background()
	w.serviceAccount(t, ns, "svc-a", "sandbox-a")
	w.serviceAccount(t, ns, "svc-b", "sandbox-b")

	type spot struct {
		ip netip.Addr
		k  *asker
	}
	spots := make([]spot, 6)
	for i := range spots {
		ip := faultAddr(40 + i)
		spots[i] = spot{ip: ip, k: newAsker(f.netns(t, "s"+strconv.Itoa(i), ip), a.URL)}
	}
	create := func(t *testing.T, name, sa string, s spot) *corev1.Pod {
		t.Helper()
		p, err := f.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: name, ServiceAccount: sa, NodeName: node, IP: s.ip})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// servedAs asks from s until it gets p's credentials (role checked), or
	// fails after 10 s. Any 200 with someone else's identity is an error.
	servedAs := func(t *testing.T, s spot, p *corev1.Pod, role string) time.Duration {
		t.Helper()
		start := time.Now()
		var last answer
		for time.Since(start) < 10*time.Second {
			last = s.k.ask()
			if last.status == http.StatusOK {
				id, ok := f.sts.Lookup(last.keyID)
				if !ok || id.PodUID != string(p.UID) || id.RoleArn != roleARN(role) {
					t.Errorf("address %s answered with %+v, want pod %s with role %s", s.ip, id, p.Name, role)
					return 0
				}
				return time.Since(start)
			}
			waitFor(ctx, 100*time.Millisecond)
		}
		t.Errorf("address %s: pod %s not served within 10 s; last answer %v", s.ip, p.Name, last)
		return 0
	}
	// steady makes 20 requests from s, which must all be p's cached
	// credentials, and returns the upstream calls they caused.
	steady := func(t *testing.T, s spot, p *corev1.Pod, role string) (stsCalls int64, tokenRequests int) {
		t.Helper()
		calls0, tr0 := f.sts.PodCalls(string(p.UID)), w.tokenRequestsFor(t, p)
		for range 20 {
			an := s.k.ask()
			id, ok := f.sts.Lookup(an.keyID)
			if an.status != http.StatusOK || !ok || id.PodUID != string(p.UID) || id.RoleArn != roleARN(role) {
				t.Errorf("address %s, pod %s: %v, identity %+v", s.ip, p.Name, an, id)
				break
			}
		}
		return f.sts.PodCalls(string(p.UID)) - calls0, w.tokenRequestsFor(t, p) - tr0
	}
	notServedAs := func(t *testing.T, s spot, p *corev1.Pod) {
		t.Helper()
		for range 3 {
			an := s.k.ask()
			if an.status != http.StatusOK {
				continue
			}
			if id, _ := f.sts.Lookup(an.keyID); id.PodUID == string(p.UID) {
				t.Errorf("address %s, which pod %s left, still answered with its credentials", s.ip, p.Name)
				return
			}
		}
	}
	// readdress takes p's addresses away, as the teardown of its sandbox
	// does, and gives it s's, as its next sandbox does.
	readdress := func(t *testing.T, p *corev1.Pod, s spot) {
		t.Helper()
		if _, err := f.cp.SetPodIPs(ctx, ns, p.Name); err != nil {
			t.Fatal(err)
		}
		if _, err := f.cp.SetPodIPs(ctx, ns, p.Name, s.ip); err != nil {
			t.Fatal(err)
		}
	}
	var figures []string

	t.Run("SameAddress", func(t *testing.T) {
		p := create(t, "same-1", "svc-a", spots[0])
		servedAs(t, spots[0], p, "sandbox-a")
		readdress(t, p, spots[0])
		took := servedAs(t, spots[0], p, "sandbox-a")
		calls, trs := steady(t, spots[0], p, "sandbox-a")
		figures = append(figures, fmt.Sprintf("same address: served again %v after its IPs were set again; 20 requests then caused %d STS calls and %d TokenRequests (%d STS calls for the pod in all)",
			took.Round(time.Millisecond), calls, trs, f.sts.PodCalls(string(p.UID))))
		if calls > 1 || trs > 1 {
			t.Errorf("20 requests after the sandbox came back caused %d STS calls and %d TokenRequests; want them served from the cache (at most 1 refetch)", calls, trs)
		}
	})
	t.Run("NewAddress", func(t *testing.T) {
		p := create(t, "moved-1", "svc-b", spots[1])
		servedAs(t, spots[1], p, "sandbox-b")
		readdress(t, p, spots[2])
		took := servedAs(t, spots[2], p, "sandbox-b")
		notServedAs(t, spots[1], p)
		calls, trs := steady(t, spots[2], p, "sandbox-b")
		figures = append(figures, fmt.Sprintf("new address: served %v after the move; 20 requests then caused %d STS calls and %d TokenRequests",
			took.Round(time.Millisecond), calls, trs))
		if calls > 1 || trs > 1 {
			t.Errorf("20 requests from the new address caused %d STS calls and %d TokenRequests; want them served from the cache (at most 1 refetch)", calls, trs)
		}
	})
	t.Run("Swap", func(t *testing.T) {
		// x is created first (creationTimestamp has one-second
		// resolution, so at least a second apart) and moves first: the
		// newer claim wins, whichever pod is older (issue 18 item 12).
		x := create(t, "swap-x", "svc-a", spots[3])
		waitFor(ctx, time.Until(x.CreationTimestamp.Add(1100*time.Millisecond)))
		y := create(t, "swap-y", "svc-b", spots[4])
		if !x.CreationTimestamp.Before(&y.CreationTimestamp) {
			t.Fatalf("x created %v, y %v: the test needs x older", x.CreationTimestamp, y.CreationTimestamp)
		}
		servedAs(t, spots[3], x, "sandbox-a")
		servedAs(t, spots[4], y, "sandbox-b")
		// x moves to y's address first, then y to x's old one.
		if _, err := f.cp.SetPodIPs(ctx, ns, x.Name, spots[4].ip); err != nil {
			t.Fatal(err)
		}
		mid := spots[4].k.ask()
		if mid.status == http.StatusOK {
			if id, _ := f.sts.Lookup(mid.keyID); id.PodUID != string(x.UID) && id.PodUID != string(y.UID) {
				t.Errorf("address %s claimed by two pods answered with a third: %+v", spots[4].ip, id)
			}
		}
		if _, err := f.cp.SetPodIPs(ctx, ns, y.Name, spots[3].ip); err != nil {
			t.Fatal(err)
		}
		tookX := servedAs(t, spots[4], x, "sandbox-a")
		tookY := servedAs(t, spots[3], y, "sandbox-b")
		cx, tx := steady(t, spots[4], x, "sandbox-a")
		cy, ty := steady(t, spots[3], y, "sandbox-b")
		figures = append(figures, fmt.Sprintf("swap: answer while both claimed one address %v; x served at its new address %v and y %v after the swap; 20 requests each then caused %d+%d STS calls and %d+%d TokenRequests",
			mid, tookX.Round(time.Millisecond), tookY.Round(time.Millisecond), cx, cy, tx, ty))
		if cx+cy > 2 || tx+ty > 2 {
			t.Errorf("after the swap, 20 requests per pod caused %d STS calls and %d TokenRequests; want them served from the cache", cx+cy, tx+ty)
		}
	})
	// Invariant 12: a pod being deleted is served its own credentials
	// until its deletionTimestamp, not after; a pod claiming its address
	// meanwhile wins at once and for good (invariant 1). No kubelet runs
	// here, so the objects stay in the API past their grace periods.
	t.Run("LastSeconds", func(t *testing.T) {
		const grace = 6
		s := spots[5]
		z := create(t, "last-z", "svc-a", s)
		servedAs(t, s, z, "sandbox-a")
		if err := f.cp.BeginDeletePod(ctx, ns, z.Name, grace); err != nil {
			t.Fatal(err)
		}
		cur, err := f.cp.Client.CoreV1().Pods(ns).Get(ctx, z.Name, metav1.GetOptions{})
		if err != nil || cur.DeletionTimestamp == nil {
			t.Fatalf("pod %s after the graceful delete: %v %+v", z.Name, err, cur)
		}
		end := cur.DeletionTimestamp.Time
		var inGrace, otherInGrace int
		for time.Until(end) > 500*time.Millisecond {
			an := s.k.ask()
			if an.got.After(end) {
				break
			}
			id, _ := f.sts.Lookup(an.keyID)
			switch {
			case an.status == http.StatusOK && id.PodUID == string(z.UID) && id.RoleArn == roleARN("sandbox-a"):
				inGrace++
			case an.got.Before(end.Add(-500 * time.Millisecond)):
				otherInGrace++
				t.Errorf("in its grace period (%v left), pod %s got %v, identity %+v; want its own credentials", time.Until(end), z.Name, an, id)
			}
			waitFor(ctx, 200*time.Millisecond)
		}
		waitFor(ctx, time.Until(end))
		var refused answer
		stoppedSeen := false
		for start := time.Now(); time.Since(start) < 5*time.Second && !stoppedSeen; waitFor(ctx, 100*time.Millisecond) {
			if an := s.k.ask(); an.status != http.StatusOK {
				refused, stoppedSeen = an, true
			}
		}
		if !stoppedSeen {
			t.Fatalf("pod %s still served 5 s after its grace period ended", z.Name)
		}
		notServedAs(t, s, z)

		// A pod in a long grace period loses its address to a new pod.
		if err := f.cp.DeletePod(ctx, ns, z.Name); err != nil {
			t.Fatal(err)
		}
		old := create(t, "last-old", "svc-a", s)
		servedAs(t, s, old, "sandbox-a")
		if err := f.cp.BeginDeletePod(ctx, ns, old.Name, 300); err != nil {
			t.Fatal(err)
		}
		servedAs(t, s, old, "sandbox-a")
		nu := create(t, "last-new", "svc-b", s)
		start := time.Now()
		var taken time.Duration
		for time.Since(start) < 10*time.Second && taken == 0 {
			an := s.k.ask()
			id, _ := f.sts.Lookup(an.keyID)
			switch {
			case an.status != http.StatusOK:
			case id.PodUID == string(nu.UID):
				taken = time.Since(start)
			case id.PodUID != string(old.UID):
				t.Fatalf("address %s answered with a third pod: %+v", s.ip, id)
			}
		}
		if taken == 0 {
			t.Fatalf("the new pod %s was not served within 10 s of its creation", nu.Name)
		}
		calls, _ := steady(t, s, nu, "sandbox-b") // every answer the new pod's
		notServedAs(t, s, old)
		figures = append(figures, fmt.Sprintf("last seconds: %d answers with its own credentials in a %d s grace period (%d others); the first request after its end, sent %v after it, answered %v (after the resolver's wait for a new owner); a new pod on the address of a pod in its grace period served %v after its creation (%d STS calls for 20 requests after)",
			inGrace, grace, otherInGrace, refused.sent.Sub(end).Round(time.Millisecond), refused, taken.Round(time.Millisecond), calls))
		if inGrace < 5 {
			t.Errorf("only %d answers with its own credentials during the grace period", inGrace)
		}
		for _, p := range []string{old.Name, nu.Name} {
			_ = f.cp.DeletePod(ctx, ns, p)
		}
	})
	t.Logf("figures: %s", strings.Join(figures, "; "))
}

// ---------------------------------------------------------------------------
// STS outage longer than a session

// sample is the upstream and the agent seen at one moment.
type sample struct {
	at         time.Time
	assumeRole int64
	goroutines int // go_goroutines; 0 if unread
}

// sampler records STS calls and the agent's goroutines every second until
// stop is closed.
func sampler(sts *oidcsts.Server, a *harness.Agent, stop <-chan struct{}) <-chan []sample {
	out := make(chan []sample, 1)
	go func() {
		var s []sample
		defer func() { out <- s }()
		for {
			g, _ := a.Goroutines(context.Background())
			s = append(s, sample{at: time.Now(), assumeRole: sts.Counts().AssumeRole, goroutines: g})
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return out
}

// callsBetween counts STS calls between two moments from the samples.
func callsBetween(s []sample, from, to time.Time) int64 {
	var first, last *sample
	for i := range s {
		if !s[i].at.Before(from) && first == nil {
			first = &s[i]
		}
		if !s[i].at.After(to) {
			last = &s[i]
		}
	}
	if first == nil || last == nil || last.at.Before(first.at) {
		return 0
	}
	return last.assumeRole - first.assumeRole
}

// waitGoroutines polls until the agent's goroutines outside connections are
// at most limit, or 30 s passed, and returns the last count.
func waitGoroutines(t *testing.T, a *harness.Agent, limit int) harness.GoroutineCount {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		g, err := a.CountGoroutines(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if g.Other <= limit || time.Now().After(deadline) {
			return g
		}
		waitFor(context.Background(), 500*time.Millisecond)
	}
}

// STS issues sessions of 75 s (oidcsts.SetLifetime; real STS grants at
// least 15 minutes, so this stands in for an outage of hours) and then
// fails for 80 s: 25 s answering 503, a 25 s throttling storm, 30 s of
// connection resets. Cached pods are served their still valid credential,
// then, once it is too old to use, a retryable error; never an expired
// credential. A pod created during the outage gets retryable errors. The
// STS calls over time show backoff: far fewer calls than requests, and
// fewer per second late in the outage than early. Once STS recovers,
// every pod is served again without restarting the agent, no retry storm
// follows, and the agent's goroutines are back to their number before the
// outage.
func (f *faults) testSTSOutage(t *testing.T) {
	const (
		ns       = "stsfault"
		lifetime = 75 * time.Second
		pause    = 200 * time.Millisecond
	)
	phases := []struct {
		name  string
		fault oidcsts.Fault
		d     time.Duration
	}{
		{"503", oidcsts.Fault{Code: oidcsts.FaultServiceUnavailable}, 25 * time.Second},
		{"throttling", oidcsts.Fault{Code: oidcsts.FaultThrottling}, 25 * time.Second},
		{"connection resets", oidcsts.Fault{Reset: true}, 30 * time.Second},
	}
	a := f.startAgent(t, "agent-sts")
	w := f.world(a)
	ctx := context.Background()
	w.serviceAccount(t, ns, "svc", "outage")
	f.sts.SetLifetime(lifetime)
	restored := false
	defer func() {
		if !restored {
			f.sts.SetLifetime(0)
			_ = f.sts.SetFault(oidcsts.Fault{})
		}
	}()

	type client struct {
		name string
		pod  *corev1.Pod
		k    *asker
		ans  []answer
	}
	cached := make([]*client, 3)
	for i := range cached {
		c := &client{name: fmt.Sprintf("cached-%d", i)}
		ip := faultAddr(60 + i)
		c.k = newAsker(f.netns(t, "t"+strconv.Itoa(i), ip), a.URL)
		p, err := f.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: c.name, ServiceAccount: "svc", NodeName: node, IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		c.pod = p
		cached[i] = c
	}
	// Each pod's last credential before the outage, issued just now (a
	// session shorter than the freshness floor is refetched on request).
	var lastExpiry time.Time
	for _, c := range cached {
		an, ok := c.k.untilOK(10 * time.Second)
		if !ok {
			t.Fatalf("pod %s before the outage: %v", c.name, an)
		}
		if an.expiration.After(lastExpiry) {
			lastExpiry = an.expiration
		}
	}
	base, err := a.CountGoroutines(ctx)
	if err != nil {
		t.Fatal(err)
	}

	fresh := &client{name: "fresh-0"}
	freshIP := faultAddr(63)
	fresh.k = newAsker(f.netns(t, "t3", freshIP), a.URL)

	stop := make(chan struct{})
	t0 := time.Now()
	samples := sampler(f.sts, a, stop)
	if err := f.sts.SetFault(phases[0].fault); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	clientsStop := make(chan struct{})
	for _, c := range cached {
		wg.Go(func() { c.k.loop(clientsStop, pause, 10_000, func(an answer) { c.ans = append(c.ans, an) }) })
	}
	p, err := f.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: fresh.name, ServiceAccount: "svc", NodeName: node, IP: freshIP})
	if err != nil {
		t.Fatal(err)
	}
	fresh.pod = p
	wg.Go(func() {
		fresh.k.loop(clientsStop, 500*time.Millisecond, 10_000, func(an answer) { fresh.ans = append(fresh.ans, an) })
	})
	var phaseStart []time.Time
	for i, ph := range phases {
		if i > 0 {
			if err := f.sts.SetFault(ph.fault); err != nil {
				t.Fatal(err)
			}
		}
		phaseStart = append(phaseStart, time.Now())
		waitFor(ctx, ph.d)
	}
	tEnd := time.Now()
	var phaseDesc []string
	for i, ph := range phases {
		next := tEnd
		if i+1 < len(phaseStart) {
			next = phaseStart[i+1]
		}
		phaseDesc = append(phaseDesc, fmt.Sprintf("%s %v", ph.name, next.Sub(phaseStart[i]).Round(time.Second)))
	}
	close(clientsStop)
	wg.Wait()
	outage := tEnd.Sub(t0)

	// Recovery: sessions of the asked length again, no fault.
	f.sts.SetLifetime(0)
	if err := f.sts.SetFault(oidcsts.Fault{}); err != nil {
		t.Fatal(err)
	}
	restored = true
	tRec := time.Now()
	recovered := map[string]time.Duration{}
	var rwg sync.WaitGroup
	var rmu sync.Mutex
	for _, c := range append(slices.Clone(cached), fresh) {
		rwg.Go(func() {
			for time.Since(tRec) < 30*time.Second {
				an := c.k.ask()
				if an.status == http.StatusOK {
					id, _ := f.sts.Lookup(an.keyID)
					rmu.Lock()
					if id.PodUID == string(c.pod.UID) && time.Until(an.expiration) > 50*time.Minute {
						recovered[c.name] = time.Since(tRec)
					} else {
						recovered[c.name] = -1
					}
					rmu.Unlock()
					return
				}
				waitFor(ctx, pause)
			}
		})
	}
	rwg.Wait()
	recoveredAt := time.Now()
	// Steady state after recovery: 10 s of requests, served from the cache.
	var steady tally
	steadyStop := make(chan struct{})
	for _, c := range append(slices.Clone(cached), fresh) {
		wg.Go(func() {
			c.k.loop(steadyStop, pause, 1000, func(an answer) {
				rmu.Lock()
				steady.add(an)
				rmu.Unlock()
			})
		})
	}
	waitFor(ctx, 10*time.Second)
	close(steadyStop)
	wg.Wait()
	steadyEnd := time.Now()
	close(stop)
	s := <-samples
	after := waitGoroutines(t, a, base.Other+2)

	// Figures.
	var cachedT, freshT tally
	var expired, wrongPod int
	minLeft := time.Duration(1 << 62)
	lastOK := map[string]time.Time{}
	for _, c := range append(slices.Clone(cached), fresh) {
		for _, an := range c.ans {
			if c == fresh {
				freshT.add(an)
			} else {
				cachedT.add(an)
			}
			if an.status != http.StatusOK {
				continue
			}
			if id, ok := f.sts.Lookup(an.keyID); !ok || id.PodUID != string(c.pod.UID) {
				wrongPod++
			}
			lastOK[c.name] = an.got
			left := an.expiration.Sub(an.got)
			minLeft = min(minLeft, left)
			if left <= 0 {
				expired++
			}
		}
	}
	var windows []string
	for from := t0; from.Before(tEnd); from = from.Add(10 * time.Second) {
		to := from.Add(10 * time.Second)
		if to.After(tEnd) {
			to = tEnd
		}
		if to.Sub(from) < time.Second {
			break
		}
		windows = append(windows, strconv.FormatInt(callsBetween(s, from, to), 10))
	}
	early := float64(callsBetween(s, t0, t0.Add(10*time.Second))) / 10
	lateFrom := tEnd.Add(-30 * time.Second)
	late := float64(callsBetween(s, lateFrom, tEnd)) / tEnd.Sub(lateFrom).Seconds()
	outageCalls := callsBetween(s, t0, tEnd)
	steadyCalls := callsBetween(s, recoveredAt, steadyEnd)
	peak := 0
	for _, x := range s {
		peak = max(peak, x.goroutines)
	}
	var rec []string
	for _, c := range append(slices.Clone(cached), fresh) {
		rec = append(rec, fmt.Sprintf("%s %v", c.name, recovered[c.name].Round(time.Millisecond)))
	}
	var lastServed []string
	for _, c := range cached {
		lastServed = append(lastServed, fmt.Sprintf("%s %v", c.name, lastOK[c.name].Sub(t0).Round(100*time.Millisecond)))
	}
	t.Logf("figures: sessions of %v, outage %v (%s), credentials expired %v into it; cached pods: %s, last served at %s into the outage, "+
		"least lifetime left on a 200 %v; new pod: %s; STS calls per 10 s of outage [%s] = %d for %d requests (%.2f/s in the first 10 s, %.2f/s in the last 30 s); "+
		"recovered after %s; 10 s after recovery: %s with %d STS calls; goroutines (go_goroutines) %d before, peak %d; outside connections %d before, %d after (total %d before, %d after)",
		lifetime, outage.Round(time.Second), strings.Join(phaseDesc, ", "), lastExpiry.Sub(t0).Round(time.Second), cachedT.String(), strings.Join(lastServed, ", "),
		minLeft.Round(time.Second), freshT.String(), strings.Join(windows, " "), outageCalls, cachedT.n+freshT.n, early, late,
		strings.Join(rec, ", "), steady.String(), steadyCalls, s[0].goroutines, peak, base.Other, after.Other, base.Total, after.Total)

	if outage <= lastExpiry.Sub(t0) {
		t.Fatalf("the outage (%v) did not outlast the cached sessions (expiring %v into it)", outage, lastExpiry.Sub(t0))
	}
	if expired > 0 {
		t.Errorf("%d answers carried an expired credential", expired)
	}
	if wrongPod > 0 {
		t.Errorf("%d answers carried another pod's credential", wrongPod)
	}
	for _, c := range cached {
		if lastOK[c.name].IsZero() {
			t.Errorf("cached pod %s got no 200 during the outage: its valid cached credential was not served", c.name)
		}
	}
	for _, c := range append(slices.Clone(cached), fresh) {
		for _, an := range c.ans {
			if an.err != nil || (an.status != http.StatusOK && !an.retryable()) {
				t.Errorf("pod %s during the outage: %v; want 200 or a retryable 503/429 with Retry-After", c.name, an)
				break
			}
		}
	}
	if freshT.ok > 0 {
		t.Errorf("the pod created during the outage got %d 200s while STS issued nothing", freshT.ok)
	}
	if m := cachedT.max(); m > cachedLatencyLimit {
		t.Errorf("a cached pod waited %v during the outage; want under %v", m, cachedLatencyLimit)
	}
	if m := freshT.max(); m > faultRequestTimeout+latencySlack {
		t.Errorf("the new pod waited %v; no request may wait longer than %v", m, faultRequestTimeout)
	}
	pods := int64(len(cached) + 1)
	if limit := pods * int64(outage/(2*time.Second)); outageCalls > limit {
		t.Errorf("%d STS calls during the %v outage for %d pods; with backoff they stay under %d (one per pod every 2 s)", outageCalls, outage.Round(time.Second), pods, limit)
	}
	if late >= early {
		t.Errorf("STS calls per second did not fall during the outage (%.2f/s in the first 10 s, %.2f/s in the last 30 s): no backoff", early, late)
	}
	for _, c := range append(slices.Clone(cached), fresh) {
		switch d, ok := recovered[c.name]; {
		case !ok:
			t.Errorf("pod %s not served within 30 s of STS recovering", c.name)
		case d < 0:
			t.Errorf("pod %s, after recovery, was served something other than a fresh credential of its own", c.name)
		}
	}
	if steady.ok != steady.n {
		t.Errorf("after recovery: %s; want every request served", steady.String())
	}
	if steadyCalls > pods {
		t.Errorf("%d STS calls in the 10 s after recovery with fresh credentials cached: a retry storm", steadyCalls)
	}
	if after.Other > base.Other+2 {
		t.Errorf("goroutines outside connections: %d before the outage, %d after (30 s to settle): a leak", base.Other, after.Other)
	}
}

// ---------------------------------------------------------------------------
// API server frozen, then killed

// kube-apiserver is frozen with SIGSTOP for 65 s (connections accepted,
// nothing answered: a hung API server), then killed for 25 s (connections
// refused), 90 s in all. The freeze alone outlasts twice the agent's default
// 30 s --role-cache-ttl, after which today's on-demand ServiceAccount lookup
// has nothing left to answer from. Cached pods keep getting 200 within a
// second. Pods the agent knows
// but has no credential for, and an address no pod has, get a retryable
// 503/429 with Retry-After, within the request timeout. While the API
// server restarts and until they are served, the waiting pods still get
// only retryable answers (a restarting kube-apiserver answers 403 for a
// moment, before its RBAC cache has synced; that is no refusal of the pod).
// The same agent process then serves the waiting pods and a pod created
// after the restart.
func (f *faults) testAPIServerOutage(t *testing.T) {
	const (
		ns     = "apifault"
		freeze = 65 * time.Second
		killed = 25 * time.Second
		pause  = 200 * time.Millisecond
	)
	a := f.startAgent(t, "agent-api")
	w := f.world(a)
	ctx := context.Background()
	pid := a.Process.Cmd.Process.Pid
	w.serviceAccount(t, ns, "svc", "api-outage")

	type client struct {
		name  string
		class string // cached, uncached, nopod
		pod   *corev1.Pod
		k     *asker
		pause time.Duration
		ans   []answer
	}
	var clients []*client
	add := func(class, name string, n int, withPod bool) *client {
		ip := faultAddr(80 + n)
		c := &client{name: name, class: class, k: newAsker(f.netns(t, "a"+strconv.Itoa(n), ip), a.URL), pause: pause}
		if withPod {
			p, err := f.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: name, ServiceAccount: "svc", NodeName: node, IP: ip})
			if err != nil {
				t.Fatal(err)
			}
			c.pod = p
		}
		clients = append(clients, c)
		return c
	}
	for i := range 3 {
		c := add("cached", fmt.Sprintf("cached-%d", i), i, true)
		start := time.Now()
		for {
			an := c.k.ask()
			if an.status == http.StatusOK {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("pod %s not served before the outage: %v", c.name, an)
			}
			waitFor(ctx, 100*time.Millisecond)
		}
	}
	// Pods the agent knows but could not fetch for: created while STS
	// fails; once the agent has tried (its TokenRequests are in the audit
	// log), the API server freezes and STS recovers.
	if err := f.sts.SetFault(oidcsts.Fault{Code: oidcsts.FaultServiceUnavailable}); err != nil {
		t.Fatal(err)
	}
	var uncached []*client
	for i := range 4 {
		uncached = append(uncached, add("uncached", fmt.Sprintf("uncached-%d", i), 3+i, true))
	}
	for _, c := range uncached {
		start := time.Now()
		for w.tokenRequestsFor(t, c.pod) == 0 {
			if time.Since(start) > 15*time.Second {
				t.Fatalf("the agent made no TokenRequest for pod %s", c.name)
			}
			waitFor(ctx, 100*time.Millisecond)
		}
		c.pause = 500 * time.Millisecond
	}
	nopod := add("nopod", "no-pod", 7, false)
	nopod.pause = time.Second
	base, err := a.CountGoroutines(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if err := f.cp.FreezeAPIServer(); err != nil {
		t.Fatal(err)
	}
	tFreeze := time.Now()
	if err := f.sts.SetFault(oidcsts.Fault{}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.k.loop(stop, c.pause, 10_000, func(an answer) { c.ans = append(c.ans, an) }) })
	}
	var readyz []string
	probe := func(label string) {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		code, err := a.Ready(pctx)
		if err != nil {
			readyz = append(readyz, label+" error")
		} else {
			readyz = append(readyz, label+" "+strconv.Itoa(code))
		}
	}
	waitFor(ctx, freeze/2)
	probe("frozen")
	waitFor(ctx, freeze-freeze/2)
	f.cp.KillAPIServer()
	tKill := time.Now()
	waitFor(ctx, killed/2)
	probe("killed")
	waitFor(ctx, killed-killed/2)
	tRestart := time.Now()
	if err := f.cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("restarting kube-apiserver: %v", err)
	}
	tUp := time.Now()

	// Recovery, with the clients still asking.
	after := &client{name: "after-restart", class: "after"}
	afterIP := faultAddr(88)
	after.k = newAsker(f.netns(t, "a8", afterIP), a.URL)
	after.pod, err = f.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: after.name, ServiceAccount: "svc", NodeName: node, IP: afterIP})
	if err != nil {
		t.Fatalf("creating a pod after the restart: %v", err)
	}
	servedAfter := map[string]time.Duration{}
	for _, c := range append(slices.Clone(uncached), after) {
		for time.Since(tUp) < 60*time.Second {
			an := c.k.ask()
			if an.status == http.StatusOK {
				if id, ok := f.sts.Lookup(an.keyID); !ok || id.PodUID != string(c.pod.UID) {
					t.Errorf("pod %s after the restart got credentials of %+v", c.name, id)
				}
				servedAfter[c.name] = time.Since(tUp)
				break
			}
			waitFor(ctx, pause)
		}
	}
	close(stop)
	wg.Wait()
	g, err := a.CountGoroutines(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Figures per phase and class.
	type key struct{ phase, class string }
	tallies := map[key]*tally{}
	// Broken answers, counted by kind, with the first of each kind.
	var kinds []string
	problems := map[string]int{}
	first := map[string]string{}
	note := func(kind, detail string) {
		if problems[kind] == 0 {
			kinds = append(kinds, kind)
			first[kind] = detail
		}
		problems[kind]++
	}
	for _, c := range clients {
		for _, an := range c.ans {
			phase := "frozen"
			switch {
			case !an.sent.Before(tUp):
				phase = "recovered"
			case !an.sent.Before(tRestart):
				// Starting: it may answer before its /readyz does.
				phase = "restarting"
			case !an.sent.Before(tKill):
				phase = "killed"
			}
			k := key{phase, c.class}
			if tallies[k] == nil {
				tallies[k] = &tally{}
			}
			tallies[k].add(an)
			down := phase == "frozen" || phase == "killed"
			if an.status == http.StatusOK {
				if id, ok := f.sts.Lookup(an.keyID); c.pod == nil || !ok || id.PodUID != string(c.pod.UID) {
					note(phase+"/"+c.class+": another pod's credentials", fmt.Sprintf("%s got %+v", c.name, id))
				}
			}
			switch {
			case c.class == "cached" && an.status != http.StatusOK:
				note(phase+"/cached: not served", fmt.Sprintf("%s: %v, %v after the freeze", c.name, an, an.sent.Sub(tFreeze).Round(time.Second)))
			case c.class == "cached" && an.latency() > cachedLatencyLimit:
				note(phase+"/cached: slower than "+cachedLatencyLimit.String(), fmt.Sprintf("%s waited %v", c.name, an.latency().Round(time.Millisecond)))
			case c.class != "cached" && an.status == http.StatusOK && down:
				note(phase+"/"+c.class+": served without an API server", c.name)
			case c.class != "cached" && an.status != http.StatusOK && !an.retryable():
				note(phase+"/"+c.class+": not a retryable 503/429 with Retry-After", fmt.Sprintf("%s: %v", c.name, an))
			case an.latency() > faultRequestTimeout+latencySlack:
				note(phase+"/"+c.class+": slower than the request timeout", fmt.Sprintf("%s waited %v", c.name, an.latency().Round(time.Millisecond)))
			}
		}
	}
	var parts []string
	for _, phase := range []string{"frozen", "killed", "restarting", "recovered"} {
		for _, class := range []string{"cached", "uncached", "nopod"} {
			if tl := tallies[key{phase, class}]; tl != nil {
				parts = append(parts, fmt.Sprintf("%s/%s: %s", phase, class, tl.String()))
			}
		}
	}
	var rec []string
	for _, c := range append(slices.Clone(uncached), after) {
		rec = append(rec, fmt.Sprintf("%s %v", c.name, servedAfter[c.name].Round(time.Millisecond)))
	}
	t.Logf("figures: frozen %v, killed %v (%v in all), API server ready %v after restart; %s; readyz %s; served after the restart (from ready): %s; "+
		"goroutines outside connections %d before, %d after (total %d, %d)",
		tKill.Sub(tFreeze).Round(time.Second), tRestart.Sub(tKill).Round(time.Second), tRestart.Sub(tFreeze).Round(time.Second),
		tUp.Sub(tRestart).Round(100*time.Millisecond), strings.Join(parts, "; "), strings.Join(readyz, ", "), strings.Join(rec, ", "),
		base.Other, g.Other, base.Total, g.Total)

	if len(kinds) > 0 {
		var lines []string
		for _, k := range kinds {
			lines = append(lines, fmt.Sprintf("%d × %s (first: %s)", problems[k], k, first[k]))
		}
		t.Errorf("answers that broke the outage contract (phase/class: what):\n%s", strings.Join(lines, "\n"))
	}
	for _, phase := range []string{"frozen", "killed"} {
		if tl := tallies[key{phase, "cached"}]; tl == nil || tl.n < 10 {
			t.Errorf("too few requests from cached pods while the API server was %s", phase)
		}
	}
	for _, c := range append(slices.Clone(uncached), after) {
		if _, ok := servedAfter[c.name]; !ok {
			t.Errorf("pod %s not served within 60 s of the API server's restart", c.name)
		}
	}
	if done, _ := a.Process.Exited(); done || a.Process.Cmd.Process.Pid != pid {
		t.Errorf("the agent exited during the outage")
	}
}
