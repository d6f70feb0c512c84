package podresolve

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/internal/kubetest"
)

const (
	testNode = "node-a"
	testNS   = "team"
	// eventTimeout only bounds how long a broken test hangs; no assertion
	// depends on it.
	eventTimeout = 20 * time.Second
)

var (
	t0        = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	hostAddrA = netip.MustParseAddr("192.168.1.10")
	podsGVR   = corev1.SchemeGroupVersion.WithResource("pods")
)

type podOpt func(*corev1.Pod)

func mkPod(name string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         testNS,
			Name:              name,
			UID:               types.UID(name + "-uid"),
			CreationTimestamp: metav1.NewTime(t0),
		},
		Spec: corev1.PodSpec{
			NodeName:           testNode,
			ServiceAccountName: "sa-" + name,
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func ips(addrs ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Status.PodIPs = nil
		p.Status.PodIP = ""
		for i, a := range addrs {
			if i == 0 {
				p.Status.PodIP = a
			}
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a})
		}
	}
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func uid(u string) podOpt             { return func(p *corev1.Pod) { p.UID = types.UID(u) } }
func onNode(n string) podOpt          { return func(p *corev1.Pod) { p.Spec.NodeName = n } }
func hostNet() podOpt                 { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }

// deleting marks a pod as being deleted with its grace period ending an
// hour after t0 (the harness's clock starts at t0).
func deleting() podOpt { return deletingUntil(t0.Add(time.Hour)) }

// deletingUntil marks a pod as being deleted with its grace period ending
// at deadline (its deletionTimestamp).
func deletingUntil(deadline time.Time) podOpt {
	return func(p *corev1.Pod) { ts := metav1.NewTime(deadline); p.DeletionTimestamp = &ts }
}
func createdAfter(d time.Duration) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t0.Add(d)) }
}

// recorder is a Listener that keeps what it heard.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (rec *recorder) PodReady(p Pod) { rec.add("ready", p) }
func (rec *recorder) PodGone(p Pod)  { rec.add("gone", p) }
func (rec *recorder) add(kind string, p Pod) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.events = append(rec.events, fmt.Sprintf("%s %s/%s %s %v", kind, p.Namespace, p.Name, p.UID, p.IPs))
}

func (rec *recorder) take() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	ev := rec.events
	rec.events = nil
	return ev
}

// harness runs a real Resolver (informer included) against a fake
// clientset.
type harness struct {
	client  *fake.Clientset
	clock   *clocktesting.FakeClock
	r       *Resolver
	rec     *recorder
	handled atomic.Int64
	wake    chan struct{}
	// watches receives one value per watch the informer opens.
	watches chan struct{}
	// hostAddrs is what Config.HostAddrs returns, or hostErr if set;
	// hostReads counts the calls.
	hostAddrs atomic.Pointer[[]netip.Addr]
	hostErr   atomic.Bool
	hostReads atomic.Int32
}

type harnessOpts struct {
	wait time.Duration
	// containers sets Config.Containers.
	containers bool
	// watch, when set, serves the informer's first watch instead of the
	// fake's object tracker.
	watch watch.Interface
	// noRun leaves the resolver stopped.
	noRun bool
	// beforeRun runs after New and before Run.
	beforeRun func(*harness)
}

func newHarness(t testing.TB, o harnessOpts, objs ...*corev1.Pod) *harness {
	t.Helper()
	robjs := make([]runtime.Object, len(objs))
	for i, p := range objs {
		robjs[i] = p
	}
	h := &harness{
		client:  fake.NewClientset(robjs...),
		clock:   clocktesting.NewFakeClock(t0),
		rec:     &recorder{},
		wake:    make(chan struct{}, 1),
		watches: make(chan struct{}, 10),
	}
	h.hostAddrs.Store(&[]netip.Addr{hostAddrA, netip.MustParseAddr("fd00::10")})
	var watchCalls atomic.Int32
	h.client.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var w watch.Interface
		if watchCalls.Add(1) == 1 && o.watch != nil {
			w = o.watch
		} else {
			var err error
			w, err = h.client.Tracker().Watch(podsGVR, action.GetNamespace(), action.(k8stesting.WatchActionImpl).ListOptions)
			if err != nil {
				return true, nil, err
			}
		}
		h.watches <- struct{}{}
		return true, w, nil
	})
	if o.wait == 0 {
		o.wait = -1
	}
	r, err := New(Config{
		Pods:       kubetest.Pods(h.client),
		NodeName:   testNode,
		WaitForPod: o.wait,
		Clock:      h.clock,
		Containers: o.containers,
		HostAddrs: func() ([]netip.Addr, error) {
			h.hostReads.Add(1)
			if h.hostErr.Load() {
				return nil, errors.New("injected failure")
			}
			return *h.hostAddrs.Load(), nil
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.r = r
	r.AddListener(h.rec)
	r.testHookHandled = func() {
		h.handled.Add(1)
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
	if o.beforeRun != nil {
		o.beforeRun(h)
	}
	if o.noRun {
		return h
	}
	h.run(t)
	h.waitSynced(t)
	// The fake's watch does not replay what happened between list and
	// watch, so act only once the watch is open.
	h.waitWatch(t)
	return h
}

// run starts Run and stops it when the test ends.
func (h *harness) run(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// waitUntil waits until cond holds, re-checking after every handled
// informer event.
func (h *harness) waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(eventTimeout)
	for !cond() {
		select {
		case <-h.wake:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func (h *harness) waitSynced(t testing.TB) {
	t.Helper()
	h.waitUntil(t, "the resolver synced", h.r.HasSynced)
}

func (h *harness) waitWatch(t testing.TB) {
	t.Helper()
	select {
	case <-h.watches:
	case <-time.After(eventTimeout):
		t.Fatal("informer did not open a watch")
	}
}

// waitHandled waits until the resolver has handled n informer events in
// total.
func (h *harness) waitHandled(t *testing.T, n int64) {
	t.Helper()
	deadline := time.After(eventTimeout)
	for h.handled.Load() < n {
		select {
		case <-h.wake:
		case <-deadline:
			t.Fatalf("resolver handled %d events, want %d", h.handled.Load(), n)
		}
	}
}

// do runs an API action that produces exactly one watch event and waits
// for the resolver to handle it.
func (h *harness) do(t *testing.T, what string, fn func(ctx context.Context, pods podClient) error) {
	t.Helper()
	n := h.handled.Load()
	if err := fn(t.Context(), h.client.CoreV1().Pods(testNS)); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	h.waitHandled(t, n+1)
}

type podClient interface {
	Create(context.Context, *corev1.Pod, metav1.CreateOptions) (*corev1.Pod, error)
	Update(context.Context, *corev1.Pod, metav1.UpdateOptions) (*corev1.Pod, error)
	UpdateStatus(context.Context, *corev1.Pod, metav1.UpdateOptions) (*corev1.Pod, error)
	Delete(context.Context, string, metav1.DeleteOptions) error
}

func create(p *corev1.Pod) func(context.Context, podClient) error {
	return func(ctx context.Context, c podClient) error {
		_, err := c.Create(ctx, p, metav1.CreateOptions{})
		return err
	}
}

func update(p *corev1.Pod) func(context.Context, podClient) error {
	return func(ctx context.Context, c podClient) error {
		_, err := c.Update(ctx, p, metav1.UpdateOptions{})
		return err
	}
}

func del(name string) func(context.Context, podClient) error {
	return func(ctx context.Context, c podClient) error { return c.Delete(ctx, name, metav1.DeleteOptions{}) }
}

// action is an API call producing one watch event, then what Resolve
// must answer right after it.
type action struct {
	what  string
	fn    func(context.Context, podClient) error
	check []want
}

// want is one expected Resolve outcome: a pod (its UID defaults to
// "<pod>-uid") or an error.
type want struct {
	ip  string
	pod string
	uid types.UID
	err error
}

func (h *harness) check(t *testing.T, ws []want) {
	t.Helper()
	for _, w := range ws {
		got, err := h.r.Resolve(t.Context(), netip.MustParseAddr(w.ip))
		switch {
		case w.err != nil:
			if !errors.Is(err, w.err) {
				t.Errorf("Resolve(%s) = %+v, %v; want error %v", w.ip, got, err, w.err)
			}
		case err != nil:
			t.Errorf("Resolve(%s): %v; want pod %s", w.ip, err, w.pod)
		case got.Name != w.pod || got.Namespace != testNS || got.ServiceAccount != "sa-"+w.pod ||
			(w.uid == "" && got.UID != types.UID(w.pod+"-uid")) || (w.uid != "" && got.UID != w.uid):
			t.Errorf("Resolve(%s) = %+v; want pod %s", w.ip, got, w.pod)
		}
	}
}

func ev(kind, name string, addrs ...string) string {
	return evUID(kind, name, name+"-uid", addrs...)
}

func evUID(kind, name, u string, addrs ...string) string {
	as := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		as[i] = netip.MustParseAddr(a)
	}
	return fmt.Sprintf("%s %s/%s %s %v", kind, testNS, name, u, as)
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		initial []*corev1.Pod
		actions []action
		want    []want
		// initEvents are heard during the initial list, in any order;
		// events after it, in this order.
		initEvents []string
		events     []string
		len        int
	}{{
		name:       "single owner",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.5")), mkPod("b", ips("10.0.0.6"))},
		want:       []want{{ip: "10.0.0.5", pod: "a"}, {ip: "10.0.0.6", pod: "b"}, {ip: "10.0.0.7", err: ErrNotFound}},
		initEvents: []string{ev("ready", "a", "10.0.0.5"), ev("ready", "b", "10.0.0.6")},
		len:        2,
	}, {
		name:       "dual stack: both addresses, and the IPv4-mapped form",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.5", "fd00:1::5"))},
		want:       []want{{ip: "10.0.0.5", pod: "a"}, {ip: "fd00:1::5", pod: "a"}, {ip: "::ffff:10.0.0.5", pod: "a"}},
		initEvents: []string{ev("ready", "a", "10.0.0.5", "fd00:1::5")},
		len:        1,
	}, {
		name:    "pod without an IP is not indexed until it gets one",
		initial: []*corev1.Pod{mkPod("a", phase(corev1.PodPending))},
		actions: []action{{what: "a gets its IP", fn: update(mkPod("a", phase(corev1.PodPending), ips("10.0.0.5")))}},
		want:    []want{{ip: "10.0.0.5", pod: "a"}},
		events:  []string{ev("ready", "a", "10.0.0.5")},
		len:     1,
	}, {
		name: "host network pods are never indexed; node addresses are refused",
		initial: []*corev1.Pod{
			mkPod("h", hostNet(), ips(hostAddrA.String())),
			// A node address HostAddrs does not report.
			mkPod("h2", hostNet(), ips("192.168.1.11")),
		},
		want: []want{
			{ip: hostAddrA.String(), err: ErrHostAddress},
			{ip: "::ffff:" + hostAddrA.String(), err: ErrHostAddress},
			{ip: "fd00::10", err: ErrHostAddress},
			{ip: "127.0.0.1", err: ErrHostAddress},
			{ip: "::1", err: ErrHostAddress},
			{ip: "192.168.1.11", err: ErrNotFound},
		},
	}, {
		name:    "pods of other nodes are ignored even if the client ignores the field selector",
		initial: []*corev1.Pod{mkPod("elsewhere", onNode("node-b"), ips("10.0.0.5"))},
		want:    []want{{ip: "10.0.0.5", err: ErrNotFound}},
	}, {
		name: "terminal pods and pods past their deletion grace period are not indexed",
		initial: []*corev1.Pod{
			mkPod("s", phase(corev1.PodSucceeded), ips("10.0.0.1")),
			mkPod("f", phase(corev1.PodFailed), ips("10.0.0.2")),
			mkPod("d", deletingUntil(t0), ips("10.0.0.3")),
		},
		want: []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "10.0.0.2", err: ErrNotFound}, {ip: "10.0.0.3", err: ErrNotFound}},
	}, {
		name:       "a pod in its deletion grace period is served",
		initial:    []*corev1.Pod{mkPod("d", deleting(), ips("10.0.0.3"))},
		want:       []want{{ip: "10.0.0.3", pod: "d"}},
		initEvents: []string{ev("ready", "d", "10.0.0.3")},
		len:        1,
	}, {
		name: "IP reuse in the initial list: the live pod is chosen over Succeeded, Failed and deleting ones",
		initial: []*corev1.Pod{
			mkPod("old-s", phase(corev1.PodSucceeded), ips("10.0.0.1")),
			mkPod("new-s", createdAfter(time.Minute), ips("10.0.0.1")),
			mkPod("old-f", phase(corev1.PodFailed), ips("10.0.0.2")),
			mkPod("new-f", createdAfter(time.Minute), ips("10.0.0.2")),
			mkPod("old-d", deleting(), ips("10.0.0.3")),
			mkPod("new-d", createdAfter(time.Minute), ips("10.0.0.3")),
		},
		want: []want{{ip: "10.0.0.1", pod: "new-s"}, {ip: "10.0.0.2", pod: "new-f"}, {ip: "10.0.0.3", pod: "new-d"}},
		initEvents: []string{
			ev("ready", "new-s", "10.0.0.1"), ev("ready", "new-f", "10.0.0.2"), ev("ready", "new-d", "10.0.0.3"),
		},
		len: 3,
	}, {
		name:    "IP reuse seen live, old pod Succeeded: ambiguous, old pod gone at once, then the new pod",
		initial: []*corev1.Pod{mkPod("old", ips("10.0.0.1"))},
		actions: []action{
			{what: "new pod takes the IP", fn: create(mkPod("new", createdAfter(time.Minute), ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", err: ErrAmbiguous}}},
			{what: "old pod succeeds", fn: update(mkPod("old", phase(corev1.PodSucceeded), ips("10.0.0.1")))},
		},
		want:       []want{{ip: "10.0.0.1", pod: "new"}},
		initEvents: []string{ev("ready", "old", "10.0.0.1")},
		events:     []string{ev("gone", "old", "10.0.0.1"), ev("ready", "new", "10.0.0.1")},
		len:        1,
	}, {
		name:    "IP reuse seen live, old pod Failed",
		initial: []*corev1.Pod{mkPod("old", ips("10.0.0.1"))},
		actions: []action{
			{what: "new pod takes the IP", fn: create(mkPod("new", createdAfter(time.Minute), ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", err: ErrAmbiguous}}},
			{what: "old pod fails", fn: update(mkPod("old", phase(corev1.PodFailed), ips("10.0.0.1")))},
		},
		want:       []want{{ip: "10.0.0.1", pod: "new"}},
		initEvents: []string{ev("ready", "old", "10.0.0.1")},
		events:     []string{ev("gone", "old", "10.0.0.1"), ev("ready", "new", "10.0.0.1")},
		len:        1,
	}, {
		// Invariant 1: the pod being deleted is served in its grace period
		// only while no other pod claims its address.
		name:    "IP reuse seen live, old pod being deleted first: served until the new pod claims the IP, which wins at once",
		initial: []*corev1.Pod{mkPod("old", ips("10.0.0.1"))},
		actions: []action{
			{what: "old pod is being deleted", fn: update(mkPod("old", deleting(), ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", pod: "old"}}},
			{what: "new pod takes the IP", fn: create(mkPod("new", createdAfter(time.Minute), ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", pod: "new"}}},
			{what: "old pod's status written again", fn: update(mkPod("old", deleting(), ips("10.0.0.1"),
				func(p *corev1.Pod) { p.Labels = map[string]string{"x": "y"} })),
				check: []want{{ip: "10.0.0.1", pod: "new"}}},
		},
		want:       []want{{ip: "10.0.0.1", pod: "new"}},
		initEvents: []string{ev("ready", "old", "10.0.0.1")},
		events:     []string{ev("gone", "old", "10.0.0.1"), ev("ready", "new", "10.0.0.1")},
		len:        1,
	}, {
		name:    "two live pods with one IP are ambiguous",
		initial: []*corev1.Pod{mkPod("a", ips("10.0.0.1")), mkPod("b", ips("10.0.0.1", "fd00:1::2"))},
		// Same creationTimestamp, seen in the initial list: no rule
		// picks either, and neither is displaced.
		want:       []want{{ip: "10.0.0.1", err: ErrAmbiguous}, {ip: "fd00:1::2", pod: "b"}},
		initEvents: []string{ev("ready", "a", "10.0.0.1"), ev("ready", "b", "10.0.0.1", "fd00:1::2")},
		len:        2,
	}, {
		name:       "ambiguity from the initial list ends when one pod goes",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.1")), mkPod("b", ips("10.0.0.1"))},
		actions:    []action{{what: "a deleted", fn: del("a")}},
		want:       []want{{ip: "10.0.0.1", pod: "b"}},
		initEvents: []string{ev("ready", "a", "10.0.0.1"), ev("ready", "b", "10.0.0.1")},
		events:     []string{ev("gone", "a", "10.0.0.1")},
		len:        1,
	}, {
		name:    "a pod whose IP was taken is never returned again, for any of its IPs",
		initial: []*corev1.Pod{mkPod("old", ips("10.0.0.1", "fd00:1::1"))},
		actions: []action{
			{what: "new pod takes the IPv4 address", fn: create(mkPod("new", createdAfter(time.Minute), ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", err: ErrAmbiguous}, {ip: "fd00:1::1", err: ErrNotFound}}},
			{what: "new pod deleted", fn: del("new")},
		},
		want:       []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "fd00:1::1", err: ErrNotFound}},
		initEvents: []string{ev("ready", "old", "10.0.0.1", "fd00:1::1")},
		events: []string{
			ev("gone", "old", "10.0.0.1", "fd00:1::1"), ev("ready", "new", "10.0.0.1"), ev("gone", "new", "10.0.0.1"),
		},
	}, {
		name:    "same creationTimestamp: the later claim wins once synced",
		initial: []*corev1.Pod{mkPod("old", ips("10.0.0.1"))},
		actions: []action{
			{what: "new pod takes the IP", fn: create(mkPod("new", ips("10.0.0.1")))},
			{what: "new pod deleted", fn: del("new")},
		},
		want:       []want{{ip: "10.0.0.1", err: ErrNotFound}},
		initEvents: []string{ev("ready", "old", "10.0.0.1")},
		events:     []string{ev("gone", "old", "10.0.0.1"), ev("ready", "new", "10.0.0.1"), ev("gone", "new", "10.0.0.1")},
	}, {
		// Issue 18 item 12: the newer claim wins, whichever pod was
		// created first; the displaced pod is not served from its old
		// address even once the claimant goes (the address may be handed
		// out again before a status says so), only from new addresses.
		name:    "a late claim by an older pod displaces the earlier claimant until it reports a new address",
		initial: []*corev1.Pod{mkPod("new", createdAfter(time.Minute), ips("10.0.0.1"))},
		actions: []action{
			{what: "older pod claims the IP", fn: create(mkPod("old", ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", err: ErrAmbiguous}}},
			{what: "older pod deleted", fn: del("old"),
				check: []want{{ip: "10.0.0.1", err: ErrNotFound}}},
			{what: "the displaced pod reports a new address", fn: update(mkPod("new", createdAfter(time.Minute), ips("10.0.0.2")))},
		},
		want:       []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "10.0.0.2", pod: "new"}},
		initEvents: []string{ev("ready", "new", "10.0.0.1")},
		events: []string{
			ev("gone", "new", "10.0.0.1"), ev("ready", "old", "10.0.0.1"), ev("gone", "old", "10.0.0.1"),
			ev("ready", "new", "10.0.0.2"),
		},
		len: 1,
	}, {
		// Issue 18 item 12, as a kubelet writes statuses after a node
		// reboot: p (created first) moves to q's address while q still
		// holds it, then q moves to p's old one. Neither is ever served
		// as the other.
		name:    "two live pods swap addresses, the pod created first moving first: both served after, each as itself",
		initial: []*corev1.Pod{mkPod("p", ips("10.0.0.1")), mkPod("q", createdAfter(time.Minute), ips("10.0.0.2"))},
		actions: []action{
			{what: "p takes q's address", fn: update(mkPod("p", ips("10.0.0.2"))),
				check: []want{{ip: "10.0.0.2", err: ErrAmbiguous}, {ip: "10.0.0.1", err: ErrNotFound}}},
			{what: "q takes p's old address", fn: update(mkPod("q", createdAfter(time.Minute), ips("10.0.0.1")))},
		},
		want:       []want{{ip: "10.0.0.1", pod: "q"}, {ip: "10.0.0.2", pod: "p"}},
		initEvents: []string{ev("ready", "p", "10.0.0.1"), ev("ready", "q", "10.0.0.2")},
		events:     []string{ev("gone", "q", "10.0.0.2"), ev("ready", "p", "10.0.0.2"), ev("ready", "q", "10.0.0.1")},
		len:        2,
	}, {
		name: "dual stack swap: the displaced pod keeps an address it won and moves off the one it lost",
		initial: []*corev1.Pod{
			mkPod("p", ips("10.0.0.1", "fd00:1::1")), mkPod("q", ips("10.0.0.2", "fd00:1::2")),
		},
		actions: []action{
			{what: "p takes q's IPv4 address, keeps its IPv6 one", fn: update(mkPod("p", ips("10.0.0.2", "fd00:1::1")))},
			{what: "q takes p's old IPv4 address, keeps its IPv6 one", fn: update(mkPod("q", ips("10.0.0.1", "fd00:1::2")))},
		},
		want: []want{
			{ip: "10.0.0.1", pod: "q"}, {ip: "fd00:1::2", pod: "q"}, {ip: "10.0.0.2", pod: "p"}, {ip: "fd00:1::1", pod: "p"},
		},
		initEvents: []string{ev("ready", "p", "10.0.0.1", "fd00:1::1"), ev("ready", "q", "10.0.0.2", "fd00:1::2")},
		events: []string{
			ev("gone", "q", "10.0.0.2", "fd00:1::2"), ev("ready", "p", "10.0.0.2", "fd00:1::1"),
			ev("ready", "q", "10.0.0.1", "fd00:1::2"),
		},
		len: 2,
	}, {
		name: "claims from the initial list are unordered, whatever the creation times: ambiguous until one moves",
		initial: []*corev1.Pod{
			mkPod("p", ips("10.0.0.1")), mkPod("q", createdAfter(time.Minute), ips("10.0.0.1")),
		},
		actions: []action{
			{what: "p moves", fn: update(mkPod("p", ips("10.0.0.2"))),
				check: []want{{ip: "10.0.0.1", pod: "q"}}},
		},
		want:       []want{{ip: "10.0.0.1", pod: "q"}, {ip: "10.0.0.2", pod: "p"}},
		initEvents: []string{ev("ready", "p", "10.0.0.1"), ev("ready", "q", "10.0.0.1")},
		events:     []string{ev("ready", "p", "10.0.0.2")},
		len:        2,
	}, {
		name:    "a pod whose deletion starts while a displaced pod still claims its address is not served",
		initial: []*corev1.Pod{mkPod("p", ips("10.0.0.1")), mkPod("q", ips("10.0.0.2"))},
		actions: []action{
			{what: "p takes q's address", fn: update(mkPod("p", ips("10.0.0.2")))},
			{what: "p is being deleted", fn: update(mkPod("p", deleting(), ips("10.0.0.2")))},
		},
		want:       []want{{ip: "10.0.0.2", err: ErrNotFound}},
		initEvents: []string{ev("ready", "p", "10.0.0.1"), ev("ready", "q", "10.0.0.2")},
		events:     []string{ev("gone", "q", "10.0.0.2"), ev("ready", "p", "10.0.0.2"), ev("gone", "p", "10.0.0.2")},
	}, {
		name:       "IP change: the same pod, ready with the new IPs and never gone",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.1"))},
		actions:    []action{{what: "IP changes", fn: update(mkPod("a", ips("10.0.0.2")))}},
		want:       []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "10.0.0.2", pod: "a"}},
		initEvents: []string{ev("ready", "a", "10.0.0.1")},
		events:     []string{ev("ready", "a", "10.0.0.2")},
		len:        1,
	}, {
		// The kubelet clears podIPs while it recreates a sandbox and sets
		// them again, the same or new, once the new one runs.
		name:    "sandbox recreated: IPs cleared, then set again; the same pod comes back",
		initial: []*corev1.Pod{mkPod("a", ips("10.0.0.1"))},
		actions: []action{
			{what: "IPs cleared", fn: update(mkPod("a", phase(corev1.PodPending))),
				check: []want{{ip: "10.0.0.1", err: ErrNotFound}}},
			{what: "same IP again", fn: update(mkPod("a", ips("10.0.0.1")))},
		},
		want:       []want{{ip: "10.0.0.1", pod: "a"}},
		initEvents: []string{ev("ready", "a", "10.0.0.1")},
		events:     []string{ev("gone", "a", "10.0.0.1"), ev("ready", "a", "10.0.0.1")},
		len:        1,
	}, {
		name:    "two live pods swap addresses, statuses updated one at a time: both resolvable after",
		initial: []*corev1.Pod{mkPod("p", ips("10.0.0.1")), mkPod("q", createdAfter(time.Minute), ips("10.0.0.2"))},
		actions: []action{
			{what: "q takes p's address", fn: update(mkPod("q", createdAfter(time.Minute), ips("10.0.0.1"))),
				check: []want{{ip: "10.0.0.1", err: ErrAmbiguous}}},
			{what: "p takes q's old address", fn: update(mkPod("p", ips("10.0.0.2")))},
		},
		want:       []want{{ip: "10.0.0.1", pod: "q"}, {ip: "10.0.0.2", pod: "p"}},
		initEvents: []string{ev("ready", "p", "10.0.0.1"), ev("ready", "q", "10.0.0.2")},
		events:     []string{ev("gone", "p", "10.0.0.1"), ev("ready", "q", "10.0.0.1"), ev("ready", "p", "10.0.0.2")},
		len:        2,
	}, {
		name:    "a displaced pod that keeps the contested address stays displaced",
		initial: []*corev1.Pod{mkPod("old", ips("10.0.0.1"))},
		actions: []action{
			{what: "new pod takes the IP", fn: create(mkPod("new", createdAfter(time.Minute), ips("10.0.0.1")))},
			{what: "old pod gains an IPv6 address", fn: update(mkPod("old", ips("10.0.0.1", "fd00:1::1")))},
		},
		want:       []want{{ip: "10.0.0.1", err: ErrAmbiguous}, {ip: "fd00:1::1", err: ErrNotFound}},
		initEvents: []string{ev("ready", "old", "10.0.0.1")},
		events:     []string{ev("gone", "old", "10.0.0.1"), ev("ready", "new", "10.0.0.1")},
		len:        1,
	}, {
		name:    "an update that changes nothing indexed is silent",
		initial: []*corev1.Pod{mkPod("a", ips("10.0.0.1"))},
		actions: []action{{what: "relabel", fn: update(mkPod("a", ips("10.0.0.1"),
			func(p *corev1.Pod) { p.Labels = map[string]string{"x": "y"} }))}},
		want:       []want{{ip: "10.0.0.1", pod: "a"}},
		initEvents: []string{ev("ready", "a", "10.0.0.1")},
		len:        1,
	}, {
		name:       "delete removes the pod",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.1", "fd00:1::1"))},
		actions:    []action{{what: "delete", fn: del("a")}},
		want:       []want{{ip: "10.0.0.1", err: ErrNotFound}, {ip: "fd00:1::1", err: ErrNotFound}},
		initEvents: []string{ev("ready", "a", "10.0.0.1", "fd00:1::1")},
		events:     []string{ev("gone", "a", "10.0.0.1", "fd00:1::1")},
	}, {
		name:       "pod becoming terminal leaves the index",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.1"))},
		actions:    []action{{what: "succeeds", fn: update(mkPod("a", phase(corev1.PodSucceeded), ips("10.0.0.1")))}},
		want:       []want{{ip: "10.0.0.1", err: ErrNotFound}},
		initEvents: []string{ev("ready", "a", "10.0.0.1")},
		events:     []string{ev("gone", "a", "10.0.0.1")},
	}, {
		// An informer that misses a delete sees this as an update.
		name:       "same name, new UID: the old pod goes, the new one comes",
		initial:    []*corev1.Pod{mkPod("a", ips("10.0.0.1"))},
		actions:    []action{{what: "replaced", fn: update(mkPod("a", uid("a-uid-2"), createdAfter(time.Minute), ips("10.0.0.1")))}},
		want:       []want{{ip: "10.0.0.1", pod: "a", uid: "a-uid-2"}},
		initEvents: []string{ev("ready", "a", "10.0.0.1")},
		events:     []string{ev("gone", "a", "10.0.0.1"), evUID("ready", "a", "a-uid-2", "10.0.0.1")},
		len:        1,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{}, tc.initial...)
			got := h.rec.take()
			slices.Sort(got)
			slices.Sort(tc.initEvents)
			if !slices.Equal(got, tc.initEvents) {
				t.Errorf("during the initial list the listener heard\n  %q\nwant\n  %q", got, tc.initEvents)
			}
			for _, a := range tc.actions {
				h.do(t, a.what, a.fn)
				h.check(t, a.check)
			}
			h.check(t, tc.want)
			if got := h.rec.take(); !slices.Equal(got, tc.events) {
				t.Errorf("listener heard\n  %q\nwant\n  %q", got, tc.events)
			}
			if got := h.r.Len(); got != tc.len {
				t.Errorf("Len() = %d, want %d", got, tc.len)
			}
		})
	}
}
