package podresolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// Log attribute keys.
const (
	logKeyNode      = "node"
	logKeyNamespace = "namespace"
	logKeyPod       = "pod"
	logKeyUID       = "uid"
	logKeyIPs       = "ips"
	logKeyPods      = "pods"
	logKeyType      = "type"
	logKeyKey       = "key"
	logKeyError     = "error"
)

// DefaultWaitForPod is how long Resolve waits for an unknown address to
// appear when Config.WaitForPod is zero.
const DefaultWaitForPod = 2 * time.Second

// PodClient lists and watches the pods of every namespace. pkg/kube's
// Client.Pods() is one.
type PodClient interface {
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Config configures a Resolver.
type Config struct {
	// Pods reads pods. Required.
	Pods PodClient
	// NodeName is the node whose pods are indexed. Required.
	NodeName string
	// WaitForPod is how long Resolve waits for an unknown address to
	// appear in the index (a pod that was just created). Zero means
	// DefaultWaitForPod; negative means do not wait.
	WaitForPod time.Duration
	// Logger receives the resolver's logs. Default: discard.
	Logger *slog.Logger
	// HostAddrs lists the node's own addresses, which are refused with
	// ErrHostAddress. Default: InterfaceAddrs. It is called when Run
	// starts, every minute, and on an unknown address at most once a
	// second.
	HostAddrs func() ([]netip.Addr, error)
	// Clock ends deletion grace periods: a pod being deleted is served
	// until its deletionTimestamp on this clock. Default: the real clock.
	Clock clock.WithDelayedExecution
	// Containers keeps, for pkg/attest's container mode, each pod's
	// container statuses (ID, name, image, image ID) and the node's
	// hostNetwork pods (see Container and HostNetworkPods). HostNetwork
	// pods then also reach listeners (PodReady, PodGone), so that what is
	// cached for them goes when they go. Off, neither is kept.
	Containers bool
}

// Resolver maps source addresses to the pods on this node. Create it with
// New, register listeners, then call Run.
type Resolver struct {
	node  string
	wait  time.Duration
	log   *slog.Logger
	clock clock.WithDelayedExecution

	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
	synced   atomic.Bool // latches reg.HasSynced
	started  atomic.Bool

	hosts hostAddrs

	// ctr is container mode's state (Config.Containers), nil otherwise.
	// Guarded by mu.
	ctr *containerState

	listeners atomic.Pointer[[]Listener]

	mu  sync.RWMutex
	idx index // guarded by mu
	// changed is closed, and replaced, whenever idx changes; await
	// selects on it. Guarded by mu.
	changed chan struct{}
	// graceTimers holds one timer per pod in its deletion grace period
	// that is still served (so at most one per pod on the node); each
	// ends that pod's grace period. Guarded by mu.
	graceTimers map[podKey]graceTimer
	// stopped is set when Run returns: no timer is armed after it.
	// Guarded by mu.
	stopped bool

	// deliver serializes changes to the index with the listener calls
	// they cause, so that listeners hear one pod's events in order even
	// when a grace timer and the informer act at once. It is taken before
	// mu and never held by Resolve.
	deliver sync.Mutex

	// testHookHandled, when set, runs after each informer event has been
	// applied and its listeners called.
	testHookHandled func()
	// testHookWaiting, when set, runs each time Resolve starts waiting for
	// the index to change.
	testHookWaiting func()
}

// New returns a Resolver for cfg. It starts no goroutines and makes no API
// calls; Run does.
func New(cfg Config) (*Resolver, error) {
	if cfg.Pods == nil {
		return nil, errors.New("podresolve: Config.Pods is required")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("podresolve: Config.NodeName is required")
	}
	r := &Resolver{
		node:        cfg.NodeName,
		wait:        cfg.WaitForPod,
		log:         cfg.Logger,
		clock:       cfg.Clock,
		idx:         newIndex(),
		changed:     make(chan struct{}),
		graceTimers: make(map[podKey]graceTimer),
	}
	if r.clock == nil {
		r.clock = clock.RealClock{}
	}
	if r.wait == 0 {
		r.wait = DefaultWaitForPod
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.hosts = hostAddrs{read: cfg.HostAddrs, log: r.log, minAge: hostAddrsMinAge}
	if r.hosts.read == nil {
		r.hosts.read = InterfaceAddrs
	}

	selector := fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	// No resync (nothing here reconciles external state) and no extra
	// indexes: lookups go through the resolver's own address index.
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = selector
			return cfg.Pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return cfg.Pods.Watch(ctx, o)
		},
	}
	// LIST, then watch: not a streamed initial list (WatchListClient).
	// The API server's watch cache answers a LIST with this field selector
	// from its spec.nodeName index, the node's pods only, but builds the
	// initial events of a streamed list by going through every pod of the
	// cluster and filtering each: measured at 25,000 pods, 92 ms of API
	// server CPU per agent start against 8 ms, and it grows with the
	// cluster (docs/upstream-cost.md, "Measured at scale").
	r.informer = cache.NewSharedIndexInformerWithOptions(listThenWatch{lw},
		&corev1.Pod{}, cache.SharedIndexInformerOptions{})
	transform := stripPod
	if cfg.Containers {
		r.ctr = &containerState{byUID: make(map[types.UID][]Container), uidByKey: make(map[podKey]types.UID),
			hostNet: make(map[podKey]hostPod), changed: make(chan struct{})}
		transform = stripPodContainers
	}
	if err := r.informer.SetTransform(transform); err != nil {
		return nil, fmt.Errorf("setting pod transform: %w", err)
	}
	reg, err := r.informer.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc:    func(obj any, initial bool) { r.handle(obj, initial) },
		UpdateFunc: func(_, obj any) { r.handle(obj, false) },
		DeleteFunc: r.handleDelete,
	})
	if err != nil {
		return nil, fmt.Errorf("registering pod event handler: %w", err)
	}
	r.reg = reg
	return r, nil
}

// AddListener registers l for pod events. Call it before Run: a listener
// added later only hears events from then on.
func (r *Resolver) AddListener(l Listener) {
	for {
		old := r.listeners.Load()
		var next []Listener
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, l)
		if r.listeners.CompareAndSwap(old, &next) {
			return
		}
	}
}

// Run runs the informer until ctx is done, then returns nil once it has
// stopped. It may be called once.
func (r *Resolver) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("podresolve: Run called more than once")
	}
	r.hosts.refresh(0)
	var wg sync.WaitGroup
	wg.Go(func() { r.informer.RunWithContext(ctx) })
	wg.Go(func() { r.hosts.run(ctx) })
	r.log.InfoContext(ctx, "pod informer starting", logKeyNode, r.node)
	select {
	case <-r.reg.HasSyncedChecker().Done():
		r.log.InfoContext(ctx, "pod informer synced", logKeyNode, r.node, logKeyPods, r.Len())
	case <-ctx.Done():
	}
	<-ctx.Done()
	wg.Wait()
	r.mu.Lock()
	r.stopped = true
	for key, gt := range r.graceTimers {
		gt.timer.Stop()
		delete(r.graceTimers, key)
	}
	r.mu.Unlock()
	return nil
}

// HasSynced reports whether the informer has listed this node's pods and
// all of them have been indexed. Until then Resolve returns ErrNotSynced.
func (r *Resolver) HasSynced() bool {
	if r.synced.Load() {
		return true
	}
	if r.reg.HasSynced() {
		r.synced.Store(true)
		return true
	}
	return false
}

// Len returns the number of served pods: live (or in their deletion
// grace period), with an IP, and not displaced by a newer claim of one of
// their addresses. Pods sharing an address with another live pod count,
// though Resolve refuses that address.
func (r *Resolver) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.idx.resolvable
}

// Resolve returns the live pod on this node that owns ip. IPv4-mapped IPv6
// addresses are unmapped first.
//
// Errors (test with errors.Is): ErrNotSynced before the informer synced;
// ErrHostAddress for the node's own addresses; ErrAmbiguous when more than
// one pod claims ip; ErrNotFound when no pod owns it after waiting up to
// Config.WaitForPod for one to appear. If ctx ends during that wait, the
// error matches both ErrNotFound and ctx's error.
//
// A hit takes a read lock and a map lookup; it never calls the API.
func (r *Resolver) Resolve(ctx context.Context, ip netip.Addr) (Pod, error) {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() {
		return Pod{}, fmt.Errorf("resolving an invalid address: %w", ErrNotFound)
	}
	if !r.HasSynced() {
		return Pod{}, fmt.Errorf("resolving %s: %w", ip, ErrNotSynced)
	}
	// SECURITY: checked before the index: an address shared by everything
	// on the host identifies nobody, whatever a pod object claims.
	if r.hosts.has(ip) {
		return Pod{}, fmt.Errorf("resolving %s: %w", ip, ErrHostAddress)
	}
	r.mu.RLock()
	pod, res := r.idx.lookup(ip)
	r.mu.RUnlock()
	switch res {
	case lookupHit:
		return pod, nil
	case lookupAmbiguous:
		return Pod{}, fmt.Errorf("resolving %s: %w", ip, ErrAmbiguous)
	}
	return r.await(ctx, ip)
}

// await is Resolve's slow path, for an address nobody owns yet: it waits
// for the index to change until a pod owns ip, the wait is over, or ctx is
// done. It is kept apart so the hit path carries no timer or defer.
func (r *Resolver) await(ctx context.Context, ip netip.Addr) (Pod, error) {
	// The node may have gained this address since the last read.
	if r.hosts.hasFresh(ip) {
		return Pod{}, fmt.Errorf("resolving %s: %w", ip, ErrHostAddress)
	}
	if r.wait < 0 {
		return Pod{}, fmt.Errorf("resolving %s: %w", ip, ErrNotFound)
	}
	timer := time.NewTimer(r.wait)
	defer timer.Stop()
	for {
		r.mu.RLock()
		pod, res := r.idx.lookup(ip)
		// Taken under the same lock as the lookup, so no change between
		// the two goes unnoticed.
		changed := r.changed
		r.mu.RUnlock()
		switch res {
		case lookupHit:
			return pod, nil
		case lookupAmbiguous:
			return Pod{}, fmt.Errorf("resolving %s: %w", ip, ErrAmbiguous)
		}
		if r.testHookWaiting != nil {
			r.testHookWaiting()
		}
		select {
		case <-changed:
		case <-timer.C:
			return Pod{}, fmt.Errorf("resolving %s: waited %s: %w", ip, r.wait, ErrNotFound)
		case <-ctx.Done():
			return Pod{}, fmt.Errorf("resolving %s: %w: %w", ip, ErrNotFound, context.Cause(ctx))
		}
	}
}

// handle applies an added or updated pod. It runs on the informer's
// handler goroutine, one event at a time.
func (r *Resolver) handle(obj any, initial bool) {
	p, ok := obj.(*storedPod)
	if !ok {
		r.log.Warn("pod informer delivered an unexpected object", logKeyType, fmt.Sprintf("%T", obj))
		return
	}
	r.apply(podKey{namespace: p.Namespace, name: p.Name}, entryFor(p, r.node), p, initial)
}

// handleDelete removes a deleted pod, including one the informer only
// learned was gone on a relist (a DeletedFinalStateUnknown tombstone, whose
// object may be stale or missing: the key is what counts).
func (r *Resolver) handleDelete(obj any) {
	var key podKey
	switch o := obj.(type) {
	case *storedPod:
		key = podKey{namespace: o.Namespace, name: o.Name}
	case cache.DeletedFinalStateUnknown:
		ns, name, err := cache.SplitMetaNamespaceKey(o.Key)
		if err != nil {
			r.log.Warn("pod informer delivered a tombstone with a bad key", logKeyKey, o.Key, logKeyError, err)
			return
		}
		key = podKey{namespace: ns, name: name}
	default:
		r.log.Warn("pod informer delivered an unexpected deleted object", logKeyType, fmt.Sprintf("%T", obj))
		return
	}
	r.apply(key, nil, nil, false)
}

// apply brings the index (and container mode's state) in line with p, the
// latest state of the pod at key (nil: deleted).
func (r *Resolver) apply(key podKey, next *entry, p *storedPod, initial bool) {
	r.deliver.Lock()
	defer r.deliver.Unlock()
	now := r.clock.Now()
	r.mu.Lock()
	var evs []event
	if r.ctr != nil {
		evs = r.trackContainersLocked(key, p, evs)
	}
	evs, changed := r.idx.set(key, next, initial, now, evs)
	r.afterChangeLocked(key, evs, changed, now)
	r.mu.Unlock()
	r.notify(evs)
	if r.testHookHandled != nil {
		r.testHookHandled()
	}
}

// expire ends the grace period of the pod at key, on its timer.
func (r *Resolver) expire(key podKey, uid types.UID, deadline time.Time) {
	r.deliver.Lock()
	defer r.deliver.Unlock()
	r.mu.Lock()
	evs, changed := r.idx.expire(key, uid, deadline, nil)
	// The timer fired: no need to read the clock (a fake clock runs
	// this while it steps).
	r.afterChangeLocked(key, evs, changed, deadline)
	r.mu.Unlock()
	r.notify(evs)
}

// afterChangeLocked wakes waiters and arms or stops the grace timers of
// the pod at key and of the pods evs are about (a pod being deleted ends
// when another claims its address). r.mu must be held.
func (r *Resolver) afterChangeLocked(key podKey, evs []event, changed bool, now time.Time) {
	if changed {
		close(r.changed)
		r.changed = make(chan struct{})
	}
	r.syncTimerLocked(key, now)
	for _, ev := range evs {
		if k := (podKey{namespace: ev.pod.Namespace, name: ev.pod.Name}); k != key {
			r.syncTimerLocked(k, now)
		}
	}
}

// syncTimerLocked arms the grace timer of the pod at key if it is served
// in its grace period, and stops it otherwise. r.mu must be held.
func (r *Resolver) syncTimerLocked(key podKey, now time.Time) {
	e := r.idx.byKey[key]
	want := e != nil && e.terminating() && !e.ended && !r.stopped
	gt, armed := r.graceTimers[key]
	if armed && want && gt.uid == e.pod.UID && gt.deadline.Equal(e.deadline) {
		return
	}
	if armed {
		gt.timer.Stop()
		delete(r.graceTimers, key)
	}
	if !want {
		return
	}
	uid, deadline := e.pod.UID, e.deadline
	r.graceTimers[key] = graceTimer{uid: uid, deadline: deadline,
		// On its own goroutine: a fake clock calls this while it steps,
		// holding a lock that arming a timer takes.
		timer: r.clock.AfterFunc(deadline.Sub(now), func() { go r.expire(key, uid, deadline) })}
}

// graceTimer ends one pod's deletion grace period.
type graceTimer struct {
	uid      types.UID
	deadline time.Time
	timer    clock.Timer
}

// notify calls the listeners for evs, outside r.mu so they may call
// Resolve.
func (r *Resolver) notify(evs []event) {
	var ls []Listener
	if p := r.listeners.Load(); p != nil {
		ls = *p
	}
	for _, ev := range evs {
		log := r.log.With(logKeyNamespace, ev.pod.Namespace, logKeyPod, ev.pod.Name, logKeyUID, ev.pod.UID)
		switch ev.kind {
		case eventReady:
			log.Debug("pod indexed", logKeyIPs, ev.pod.IPs)
			for _, l := range ls {
				l.PodReady(ev.pod)
			}
		case eventGone:
			if ev.by.UID != "" {
				log = log.With("newNamespace", ev.by.Namespace, "newPod", ev.by.Name, "newUID", ev.by.UID)
			}
			switch ev.why {
			case goneDisplaced:
				log.Info("another pod newly claims this pod's address; this pod is not served until it reports new addresses",
					logKeyIPs, ev.pod.IPs)
			case goneTaken:
				log.Info("pod being deleted lost its address to another pod; it will not be served again",
					logKeyIPs, ev.pod.IPs)
			case goneExpired:
				log.Debug("pod's deletion grace period ended")
			default:
				log.Debug("pod left the index")
			}
			for _, l := range ls {
				l.PodGone(ev.pod)
			}
		}
	}
}

// listThenWatch tells client-go's reflector not to stream its initial list
// (client-go's watchlist.DoesClientNotSupportWatchListSemantics), so that it
// lists and then watches from the list's resourceVersion.
type listThenWatch struct{ *cache.ListWatch }

func (listThenWatch) IsWatchListSemanticsUnSupported() bool { return true }
