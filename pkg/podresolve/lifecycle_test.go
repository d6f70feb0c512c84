package podresolve

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/credbroker/agent/internal/kubetest"
)

// resolveAsync runs Resolve in a goroutine and returns its result channel.
func resolveAsync(ctx context.Context, r *Resolver, ip string) <-chan resolveResult {
	out := make(chan resolveResult, 1)
	go func() {
		p, err := r.Resolve(ctx, netip.MustParseAddr(ip))
		out <- resolveResult{p, err}
	}()
	return out
}

type resolveResult struct {
	pod Pod
	err error
}

func recv[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(eventTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waitingHook makes Resolve report each time it starts waiting.
func waitingHook(ch chan struct{}) func(*harness) {
	return func(h *harness) { h.r.testHookWaiting = func() { ch <- struct{}{} } }
}

func TestResolveWaitsForNewPod(t *testing.T) {
	waiting := make(chan struct{}, 10)
	// A wait far longer than the test: only the pod's arrival can end it.
	h := newHarness(t, harnessOpts{wait: time.Hour, beforeRun: waitingHook(waiting)})
	res := resolveAsync(t.Context(), h.r, "10.0.0.9")
	recv(t, "Resolve to wait", waiting)

	// An unrelated change wakes the waiter, which goes back to waiting.
	h.do(t, "create another pod", create(mkPod("other", ips("10.0.0.8"))))
	recv(t, "Resolve to wait again", waiting)

	h.do(t, "create the pod", create(mkPod("late", ips("10.0.0.9"))))
	got := recv(t, "Resolve", res)
	if got.err != nil || got.pod.Name != "late" {
		t.Fatalf("Resolve = %+v, %v; want pod late", got.pod, got.err)
	}
}

func TestResolveWaitEndsWithNotFound(t *testing.T) {
	waiting := make(chan struct{}, 10)
	h := newHarness(t, harnessOpts{wait: 20 * time.Millisecond, beforeRun: waitingHook(waiting)})
	_, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.0.0.9"))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve = %v, want ErrNotFound", err)
	}
	if len(waiting) != 1 {
		t.Errorf("Resolve waited %d times, want 1", len(waiting))
	}
}

func TestResolveWaitHonoursContext(t *testing.T) {
	waiting := make(chan struct{}, 10)
	h := newHarness(t, harnessOpts{wait: time.Hour, beforeRun: waitingHook(waiting)})
	ctx, cancel := context.WithCancel(t.Context())
	res := resolveAsync(ctx, h.r, "10.0.0.9")
	recv(t, "Resolve to wait", waiting)
	cancel()
	got := recv(t, "Resolve", res)
	if !errors.Is(got.err, ErrNotFound) || !errors.Is(got.err, context.Canceled) {
		t.Fatalf("Resolve = %v, want an error matching ErrNotFound and context.Canceled", got.err)
	}
}

func TestResolveDoesNotWaitWhenItKnows(t *testing.T) {
	waiting := make(chan struct{}, 10)
	h := newHarness(t, harnessOpts{wait: time.Hour, beforeRun: waitingHook(waiting)},
		mkPod("a", ips("10.0.0.1")), mkPod("b", ips("10.0.0.2")), mkPod("c", ips("10.0.0.2")))
	for _, tc := range []struct {
		ip  string
		err error
	}{{"10.0.0.1", nil}, {"10.0.0.2", ErrAmbiguous}, {hostAddrA.String(), ErrHostAddress}} {
		if _, err := h.r.Resolve(t.Context(), netip.MustParseAddr(tc.ip)); !errors.Is(err, tc.err) {
			t.Errorf("Resolve(%s) = %v, want %v", tc.ip, err, tc.err)
		}
	}
	if len(waiting) != 0 {
		t.Errorf("Resolve waited %d times, want 0", len(waiting))
	}
}

func TestNotSyncedUntilInitialListIndexed(t *testing.T) {
	listing := make(chan struct{}, 10)
	release := make(chan struct{})
	var once sync.Once
	h := newHarness(t, harnessOpts{noRun: true, beforeRun: func(h *harness) {
		h.client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
			listing <- struct{}{}
			<-release
			return false, nil, nil // on to the object tracker
		})
	}}, mkPod("a", ips("10.0.0.1")))

	check := func(when string) {
		t.Helper()
		if h.r.HasSynced() {
			t.Errorf("%s: HasSynced() = true", when)
		}
		if _, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.0.0.1")); !errors.Is(err, ErrNotSynced) {
			t.Errorf("%s: Resolve = %v, want ErrNotSynced", when, err)
		}
	}
	check("before Run")
	h.run(t)
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // runs before Run's cleanup
	recv(t, "the informer to list", listing)
	check("while listing")

	once.Do(func() { close(release) })
	h.waitSynced(t)
	if p, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.0.0.1")); err != nil || p.Name != "a" {
		t.Errorf("after sync: Resolve = %+v, %v; want pod a", p, err)
	}
}

func TestInformerIsLimitedToNode(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var lists, watches int
	for _, a := range h.client.Actions() {
		if a.GetResource() != podsGVR {
			continue
		}
		var fields string
		switch a := a.(type) {
		case k8stesting.ListActionImpl:
			lists++
			fields = a.GetListRestrictions().Fields.String()
		case k8stesting.WatchActionImpl:
			watches++
			fields = a.GetWatchRestrictions().Fields.String()
		default:
			continue
		}
		if a.GetNamespace() != "" || fields != "spec.nodeName="+testNode {
			t.Errorf("%s in namespace %q with field selector %q; want all namespaces, spec.nodeName=%s",
				a.GetVerb(), a.GetNamespace(), fields, testNode)
		}
	}
	if lists == 0 || watches == 0 {
		t.Errorf("saw %d lists and %d watches of pods, want at least one of each", lists, watches)
	}
}

func TestDeletedFinalStateUnknownRemovesPod(t *testing.T) {
	// Serve the first watch from a watcher the test controls, so the pod
	// can vanish without a delete event; expiring that watch makes the
	// informer relist and report the pod through a tombstone.
	fw := watch.NewRaceFreeFake()
	h := newHarness(t, harnessOpts{watch: fw}, mkPod("a", ips("10.0.0.1")), mkPod("b", ips("10.0.0.2")))
	// A second handler runs on its own goroutine: the test waits for what it
	// saw, rather than reading a counter it may not have updated yet.
	tombstones := make(chan struct{}, 8)
	if _, err := h.r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		if _, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			tombstones <- struct{}{}
		}
	}}); err != nil {
		t.Fatal(err)
	}
	h.rec.take()

	if err := h.client.Tracker().Delete(podsGVR, testNS, "a"); err != nil {
		t.Fatal(err)
	}
	fw.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old"})
	h.waitUntil(t, "pod a is gone", func() bool {
		_, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.0.0.1"))
		return errors.Is(err, ErrNotFound)
	})
	h.waitWatch(t)

	select {
	case <-tombstones:
	case <-time.After(eventTimeout):
		t.Error("informer delivered no tombstone (the test no longer covers them)")
	}
	if got, want := h.rec.take(), []string{ev("gone", "a", "10.0.0.1")}; !reflect.DeepEqual(got, want) {
		t.Errorf("listener heard %q, want %q", got, want)
	}
	if p, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.0.0.2")); err != nil || p.Name != "b" {
		t.Errorf("Resolve(10.0.0.2) = %+v, %v; want pod b", p, err)
	}
}

func TestTombstoneWithoutObject(t *testing.T) {
	h := newHarness(t, harnessOpts{}, mkPod("a", ips("10.0.0.1")))
	h.rec.take()
	// Only the key is reliable in a tombstone.
	h.r.handleDelete(cache.DeletedFinalStateUnknown{Key: testNS + "/a"})
	h.r.handleDelete(cache.DeletedFinalStateUnknown{Key: "a/b/c"}) // malformed: ignored
	if _, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.0.0.1")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve = %v, want ErrNotFound", err)
	}
	if got, want := h.rec.take(), []string{ev("gone", "a", "10.0.0.1")}; !reflect.DeepEqual(got, want) {
		t.Errorf("listener heard %q, want %q", got, want)
	}
}

// fullPod is a pod as an API server returns it, with the bulk the
// transform must drop.
func fullPod(name, ip string) *corev1.Pod {
	p := mkPod(name, ips(ip, v6FromV4(ip)))
	p.ResourceVersion = "12345"
	p.Labels = map[string]string{"app": "web", "pod-template-hash": "abc123"}
	p.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"big":"blob"}`}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-abc", UID: "rs"}}
	p.Finalizers = []string{"example.com/f"}
	p.GenerateName = "web-abc-"
	p.ManagedFields = []metav1.ManagedFieldsEntry{{
		Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{"f:conditions":{}}}`)},
	}}
	p.Spec.Containers = []corev1.Container{{
		Name: "web", Image: "registry.example/web:1.2.3",
		Env: []corev1.EnvVar{{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://169.254.170.23/v1/credentials"}},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi"),
		}},
		VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
	}}
	p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	p.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}}
	p.Status.HostIP = "192.168.1.10"
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "web", Ready: true, Image: "registry.example/web:1.2.3", ImageID: "sha256:0123"}}
	return p
}

// v6FromV4 gives a pod's IPv6 address in the tests' dual-stack scheme:
// fd00:1:: plus the IPv4 address in the low 32 bits.
func v6FromV4(ip string) string {
	a := netip.MustParseAddr("fd00:1::").As16()
	copy(a[12:], netip.MustParseAddr(ip).AsSlice())
	return netip.AddrFrom16(a).String()
}

func TestTransformStripsPods(t *testing.T) {
	in := fullPod("a", "10.0.0.1")
	del := metav1.NewTime(t0.Add(time.Hour))
	in.DeletionTimestamp = &del
	orig := in.DeepCopy()

	got, err := stripPod(in)
	if err != nil {
		t.Fatal(err)
	}
	want := &storedPod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: testNS, Name: "a", UID: "a-uid", ResourceVersion: "12345",
			CreationTimestamp: metav1.NewTime(t0), DeletionTimestamp: &del,
		},
		Spec: storedSpec{NodeName: testNode, ServiceAccountName: "sa-a"},
		Status: storedStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.1",
			PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00:1::a00:1"}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stripPod =\n%+v\nwant\n%+v", got, want)
	}
	if !reflect.DeepEqual(in, orig) {
		t.Error("stripPod modified its input")
	}
	again, _ := stripPod(got)
	if !reflect.DeepEqual(again, want) {
		t.Error("stripPod is not idempotent")
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "x/y"}
	if same, _ := stripPod(tomb); same != tomb {
		t.Error("stripPod changed a non-pod object")
	}

	hn := fullPod("h", "10.0.0.2")
	hn.Spec.HostNetwork = true
	if got, _ := stripPod(hn); !got.(*storedPod).Spec.HostNetwork {
		t.Error("stripPod dropped hostNetwork")
	}
}

func TestInformerStoreHoldsStrippedPods(t *testing.T) {
	h := newHarness(t, harnessOpts{}, fullPod("a", "10.0.0.1"), fullPod("b", "10.0.0.2"))
	h.do(t, "create", create(fullPod("c", "10.0.0.3")))
	objs := h.r.informer.GetStore().List()
	if len(objs) != 3 {
		t.Fatalf("store holds %d objects, want 3", len(objs))
	}
	for _, o := range objs {
		p := o.(*storedPod)
		want, _ := stripPod(fullPod(p.Name, p.Status.PodIP))
		// The fake tracker may set a resource version of its own.
		want.(*storedPod).ResourceVersion = p.ResourceVersion
		if !reflect.DeepEqual(p, want) {
			t.Errorf("store holds\n%+v\nwant\n%+v", p, want)
		}
	}
}

// reentrantListener calls Resolve from PodReady, as a broker prefetching
// credentials might.
type reentrantListener struct {
	r   *Resolver
	got chan resolveResult
}

func (l *reentrantListener) PodReady(p Pod) {
	got, err := l.r.Resolve(context.Background(), p.IPs[0])
	l.got <- resolveResult{got, err}
}
func (l *reentrantListener) PodGone(Pod) {}

func TestListenersMayCallResolve(t *testing.T) {
	l := &reentrantListener{got: make(chan resolveResult, 1)}
	h := newHarness(t, harnessOpts{beforeRun: func(h *harness) { l.r = h.r; h.r.AddListener(l) }})
	h.do(t, "create", create(mkPod("a", ips("10.0.0.1"))))
	got := recv(t, "the listener", l.got)
	if got.err != nil || got.pod.Name != "a" {
		t.Errorf("Resolve from PodReady = %+v, %v; want pod a", got.pod, got.err)
	}
}

func TestHostAddressesRefreshOnMiss(t *testing.T) {
	newAddr := netip.MustParseAddr("192.168.1.20")
	h := newHarness(t, harnessOpts{beforeRun: func(h *harness) { h.r.hosts.minAge = time.Hour }})
	reads := h.hostReads.Load()
	h.hostAddrs.Store(&[]netip.Addr{hostAddrA, newAddr})

	// Within minAge of the last read a miss does not re-read.
	if _, err := h.r.Resolve(t.Context(), newAddr); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve = %v, want ErrNotFound before a re-read", err)
	}
	if got := h.hostReads.Load(); got != reads {
		t.Errorf("HostAddrs called %d more times, want 0", got-reads)
	}

	h.r.hosts.minAge = 0
	if _, err := h.r.Resolve(t.Context(), newAddr); !errors.Is(err, ErrHostAddress) {
		t.Errorf("Resolve = %v, want ErrHostAddress after a re-read", err)
	}
	if got := h.hostReads.Load(); got != reads+1 {
		t.Errorf("HostAddrs called %d more times, want 1", got-reads)
	}

	// A failing source keeps the last good list.
	h.hostErr.Store(true)
	if _, err := h.r.Resolve(t.Context(), netip.MustParseAddr("10.9.9.9")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve = %v, want ErrNotFound", err)
	}
	if _, err := h.r.Resolve(t.Context(), newAddr); !errors.Is(err, ErrHostAddress) {
		t.Errorf("Resolve = %v, want ErrHostAddress after a failed re-read", err)
	}
}

func TestInterfaceAddrsIncludesLoopback(t *testing.T) {
	addrs, err := InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IsLoopback() {
			return
		}
	}
	t.Errorf("InterfaceAddrs() = %v, want a loopback address among them", addrs)
}

func TestNewValidates(t *testing.T) {
	client := fake.NewClientset()
	for _, cfg := range []Config{{NodeName: testNode}, {Pods: kubetest.Pods(client)}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestRunTwice(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	if err := h.r.Run(t.Context()); err == nil {
		t.Error("second Run succeeded, want an error")
	}
}
