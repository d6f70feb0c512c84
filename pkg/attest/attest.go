package attest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/podresolve"
)

// Errors Resolve returns besides the wrapped resolver's. Both are
// retryable; callers branch on them with errors.Is.
var (
	// ErrRefused means the kernel does not place the connection in the
	// network namespace of any pod the informer knows (or the request
	// carries no connection to attest). The informer's pod is not served.
	ErrRefused = errors.New("attest: the connection is not in the network namespace of any known pod on this node")
	// ErrUnavailable means the kernel's evidence could not be read.
	ErrUnavailable = errors.New("attest: the node's kernel evidence for the connection could not be read")
)

// Results, the values of the result label.
const (
	ResultAttested    = "attested"
	ResultCorrected   = "corrected"
	ResultRefused     = "refused"
	ResultUnavailable = "unavailable"
)

// Defaults.
const (
	DefaultProcRoot          = "/proc"
	DefaultMinRescanInterval = time.Second
	// inodeRing is how many attested socket inodes each pod remembers.
	inodeRing = 4
	// tableReaders bounds concurrent TCP table reads: each walks the
	// host's whole connection hash, so more would only compete for CPU.
	tableReaders = 2
)

// Resolver names the pod the informer sees at an address; podresolve's
// Resolver is one.
type Resolver interface {
	Resolve(ctx context.Context, addr netip.Addr) (podresolve.Pod, error)
}

// Pods is the informer's view of the node's pods that attestation needs;
// podresolve's Resolver implements it.
type Pods interface {
	// PodByUID returns the live pod with uid, if the informer would serve
	// it.
	PodByUID(uid types.UID) (podresolve.Pod, bool)
	// LivePods returns every pod the informer would serve.
	LivePods() []podresolve.Pod
}

// Config configures an Attester.
type Config struct {
	Resolver Resolver // required: the informer's resolver, decorated
	Pods     Pods     // required
	// ProcRoot is where procfs is mounted. Default DefaultProcRoot.
	ProcRoot string
	// Registerer receives the metrics. Required.
	Registerer prometheus.Registerer
	// Logger receives one line per attested connection. The agent passes
	// the per-address log limiter; AddrKey names the attribute it limits
	// on. Default: discard.
	Logger  *slog.Logger
	AddrKey string // default "remote_addr"
	// MinRescanInterval is the least time between two /proc scans.
	// Default DefaultMinRescanInterval.
	MinRescanInterval time.Duration
	// Containers, when set, turns on container mode: each connection is
	// also attested to the container whose process holds its socket
	// (returned as Pod.Container), and connections from the node's own
	// addresses are attested to the hostNetwork pod whose container holds
	// them. It needs CAP_SYS_PTRACE (see container.go).
	Containers ContainerPods
}

// Attester decorates a Resolver with the kernel's evidence. Create it with
// New; its Resolve is safe for concurrent use.
type Attester struct {
	inner     Resolver
	pods      Pods
	cpods     ContainerPods // nil unless container mode
	pidx      procIndex     // container mode's process listing
	sockMnt   int           // container mode: the socket filesystem's mount ID, set by Check
	self      int32         // the agent's own PID, never a connection's client
	root      string
	log       *slog.Logger
	addrKey   string
	minRescan time.Duration
	m         metrics

	tableSem chan struct{}
	// correcting admits one search of the other pods at a time: it reads
	// one table per pod that has the address, and only a forged or stale
	// address needs it.
	correcting chan struct{}

	mu    sync.Mutex
	procs map[types.UID]*podProc // guarded by mu; replaced by each scan
	// absent holds the pods the informer served at the last scan that had
	// no process then. Their sandbox existed before the kubelet reported
	// their address, so until the next scan is due, a connection naming
	// one of them is answered without waiting for it. Guarded by mu;
	// replaced by each scan.
	absent   map[types.UID]struct{}
	lastScan time.Time  // guarded by mu: when the last scan started
	scanMu   sync.Mutex // one scan at a time

	status atomic.Pointer[Status]
	reads  atomic.Int64 // TCP table reads run, for tests
}

// podProc is what the Attester keeps per pod: a process in it, the last
// socket inodes attested for it, and the pod's table reads in flight.
type podProc struct {
	pid int32

	mu      sync.Mutex
	inodes  [inodeRing]uint32 // guarded by mu
	nextIno uint8             // guarded by mu
	cur     *tableRead        // guarded by mu: the latest read started
	next    *tableRead        // guarded by mu: queued behind cur
}

// tableRead is one read of a pod's TCP table, shared by every connection
// accepted before it started.
type tableRead struct {
	v6     bool
	server string
	start  time.Time
	done   chan struct{}
	lines  []byte // the lines whose remote end is server; set before done closes
	err    error
}

type metrics struct {
	results   *prometheus.CounterVec
	duration  prometheus.Histogram
	scans     prometheus.Counter
	available prometheus.Gauge
	served    prometheus.Counter
	// containers counts container mode's outcomes (registered in
	// container mode only).
	containers *prometheus.CounterVec
}

// New returns an Attester. It reads nothing yet: call Check once the
// informer has synced.
func New(cfg Config) (*Attester, error) {
	switch {
	case cfg.Resolver == nil:
		return nil, errors.New("attest: Config.Resolver is required")
	case cfg.Pods == nil:
		return nil, errors.New("attest: Config.Pods is required")
	case cfg.Registerer == nil:
		return nil, errors.New("attest: Config.Registerer is required")
	}
	a := &Attester{
		inner: cfg.Resolver, pods: cfg.Pods, cpods: cfg.Containers, root: cfg.ProcRoot, log: cfg.Logger, addrKey: cfg.AddrKey,
		minRescan:  cfg.MinRescanInterval,
		tableSem:   make(chan struct{}, tableReaders),
		correcting: make(chan struct{}, 1),
		procs:      make(map[types.UID]*podProc),
		self:       int32(os.Getpid()),
	}
	if a.root == "" {
		a.root = DefaultProcRoot
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.addrKey == "" {
		a.addrKey = "remote_addr"
	}
	if a.minRescan == 0 {
		a.minRescan = DefaultMinRescanInterval
	}
	a.m = metrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "credbroker_attest_total",
			Help: "Connections attested by the node's kernel, by result: attested (in the informer's pod's network namespace), corrected (in another known pod's), refused (in none), unavailable (evidence unreadable)."},
			[]string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "credbroker_attest_duration_seconds",
			Help:    "Time to attest one connection (first request on it).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2.5, 11)}),
		scans: prometheus.NewCounter(prometheus.CounterOpts{Name: "credbroker_attest_proc_scans_total",
			Help: "Scans of /proc for the pods' processes (on a pod whose process is unknown or gone)."}),
		available: prometheus.NewGauge(prometheus.GaugeOpts{Name: "credbroker_attest_available",
			Help: "1 when the start-up check found that attestation works on this node, 0 when it cannot (see the log and /readyz)."}),
		served: prometheus.NewCounter(prometheus.CounterOpts{Name: "credbroker_attest_grants_logged_total",
			Help: "Credential grants logged against their attested connection (once per connection and grant; cache hits included)."}),
	}
	for _, r := range []string{ResultAttested, ResultCorrected, ResultRefused, ResultUnavailable} {
		a.m.results.WithLabelValues(r)
	}
	a.m.containers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "credbroker_attest_containers_total",
		Help: "Container mode: connections attested to a container, by result: container (of the pod whose network namespace holds the connection), host_network (of a hostNetwork pod), no_holder (no process of the pod holds the socket), unknown_container (not in the pod's status), unavailable (fd tables unreadable)."},
		[]string{"result"})
	collectors := []prometheus.Collector{a.m.results, a.m.duration, a.m.scans, a.m.available, a.m.served}
	if a.cpods != nil {
		for _, r := range []string{CtrContainer, CtrHostNetwork, CtrNoHolder, CtrUnknownContainer, CtrUnavailable} {
			a.m.containers.WithLabelValues(r)
		}
		collectors = append(collectors, a.m.containers)
	}
	for _, c := range collectors {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("attest: registering metrics: %w", err)
		}
	}
	return a, nil
}

type connKey struct{}

// connState is the per-connection value WithConn puts in the context.
type connState struct {
	client, server netip.AddrPort
	accepted       time.Time
	ok             bool // both addresses are TCP addresses

	mu      sync.Mutex // serialises the first attestation; guards served
	verdict atomic.Pointer[verdict]
	// served lists what was logged as served on this connection, so that a
	// keep-alive connection asking again and again logs each grant once.
	served []servedGrant
}

// verdict is what a connection was attested to: a pod and, in container
// mode, its container.
type verdict struct {
	uid       types.UID
	container *podresolve.Container
}

// servedGrant is one credential grant logged for a connection.
type servedGrant struct {
	uid                    types.UID
	cloud, identity, scope string
}

// maxServedPerConn bounds what a connection remembers of its grants: past
// it, further grants are still logged (through the per-address log
// limiter), only no longer deduplicated.
const maxServedPerConn = 8

// WithConn returns ctx carrying c, for http.Server.ConnContext: requests on
// c are then attested against c's addresses, once per connection.
func WithConn(ctx context.Context, c net.Conn) context.Context {
	cs := &connState{accepted: time.Now()}
	ra, ok1 := c.RemoteAddr().(*net.TCPAddr)
	la, ok2 := c.LocalAddr().(*net.TCPAddr)
	if ok1 && ok2 {
		cl, sv := ra.AddrPort(), la.AddrPort()
		cs.client = netip.AddrPortFrom(cl.Addr().Unmap().WithZone(""), cl.Port())
		cs.server = netip.AddrPortFrom(sv.Addr().Unmap().WithZone(""), sv.Port())
		cs.ok = cs.client.Addr().Is4() == cs.server.Addr().Is4()
	}
	return context.WithValue(ctx, connKey{}, cs)
}

// Resolve returns the pod the kernel places the caller's connection in.
// The wrapped resolver's errors pass through unchanged, except that an
// address two live pods claim is settled by the kernel; see the package
// documentation for the rest.
//
// SECURITY: the pod returned is the one whose network namespace holds the
// connection carried by ctx; the informer's answer for addr only says where
// to look first.
func (a *Attester) Resolve(ctx context.Context, addr netip.Addr) (podresolve.Pod, error) {
	cs, _ := ctx.Value(connKey{}).(*connState)
	if cs == nil || !cs.ok || cs.client.Addr() != addr.Unmap().WithZone("") {
		a.m.results.WithLabelValues(ResultRefused).Inc()
		return podresolve.Pod{}, fmt.Errorf("attesting %s: the request carries no TCP connection from that address: %w", addr, ErrRefused)
	}
	pod, err := a.inner.Resolve(ctx, addr)
	if v := cs.verdict.Load(); v != nil {
		if err == nil && pod.UID == v.uid {
			pod.Container = v.container
			return pod, nil
		}
		return a.again(v, err)
	}
	// Two live pods claiming the address is a question the kernel can
	// answer: whichever namespace holds the connection.
	ambiguous := errors.Is(err, podresolve.ErrAmbiguous)
	// In container mode, so is a caller on the node's own address: a
	// hostNetwork pod's container, or nobody.
	host := a.cpods != nil && errors.Is(err, podresolve.ErrHostAddress)
	if err != nil && !ambiguous && !host {
		return pod, err
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if v := cs.verdict.Load(); v != nil {
		if err == nil && pod.UID == v.uid {
			pod.Container = v.container
			return pod, nil
		}
		return a.again(v, nil)
	}
	if host {
		return a.hostNetworkCaller(ctx, cs, err)
	}
	if ambiguous {
		pod = podresolve.Pod{}
	}
	return a.attest(ctx, cs, pod)
}

// again answers a later request on a connection already attested for the
// pod uid, when the informer now names another pod (or none) for its
// address: the connection still comes from uid's namespace, so uid is
// served while the informer still has it live, and nobody otherwise.
func (a *Attester) again(v *verdict, err error) (podresolve.Pod, error) {
	if p, ok := a.pods.PodByUID(v.uid); ok {
		p.Container = v.container
		return p, nil
	}
	if err != nil {
		return podresolve.Pod{}, err
	}
	return podresolve.Pod{}, fmt.Errorf("the pod attested for this connection (UID %s) is gone: %w", v.uid, ErrRefused)
}

// Served logs that pod was granted a credential for identity (and scope)
// on cloud over the connection carried by ctx, once per connection and
// grant. With the line that attested the connection (same remote address
// and client port) it says afterwards who got what, on which evidence: a
// credential served from cache leaves this line too. Nothing secret is
// logged: identities, scopes and audiences are names.
func (a *Attester) Served(ctx context.Context, pod podresolve.Pod, cloud, identity, scope string) {
	cs, _ := ctx.Value(connKey{}).(*connState)
	if cs == nil {
		return
	}
	g := servedGrant{uid: pod.UID, cloud: cloud, identity: identity, scope: scope}
	cs.mu.Lock()
	seen := slices.Contains(cs.served, g)
	if !seen && len(cs.served) < maxServedPerConn {
		cs.served = append(cs.served, g)
	}
	cs.mu.Unlock()
	if seen {
		return
	}
	a.m.served.Inc()
	attrs := []slog.Attr{
		slog.String(a.addrKey, cs.client.Addr().String()), slog.Int("client_port", int(cs.client.Port())),
		slog.String("namespace", pod.Namespace), slog.String("pod", pod.Name), slog.String("uid", string(pod.UID)),
		slog.String("cloud", cloud), slog.String("identity", identity), slog.String("scope", scope),
	}
	if c := pod.Container; c != nil {
		attrs = append(attrs, containerAttrs(c)...)
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "credentials served on an attested connection", attrs...)
}

// containerAttrs name a container in the log: which one, of which kind,
// running which image.
func containerAttrs(c *podresolve.Container) []slog.Attr {
	return []slog.Attr{slog.String("container", c.Name), slog.String("container_kind", c.Kind.String()),
		slog.String("container_id", c.ID), slog.String("image", c.Image), slog.String("image_id", c.ImageID)}
}

// evidence is what the kernel showed for one connection.
type evidence struct {
	pid   int32
	inode uint64
}

func (a *Attester) attest(ctx context.Context, cs *connState, cand podresolve.Pod) (podresolve.Pod, error) {
	start := time.Now()
	defer func() { a.m.duration.Observe(time.Since(start).Seconds()) }()

	// cand is empty when the informer has no single pod for the address.
	if cand.UID != "" {
		ev, found, err := a.search(ctx, cs, cand.UID)
		switch {
		case err != nil:
			return a.unavailable(ctx, cs, cand, err)
		case found:
			if err := a.remember(cand.UID, ev); err != nil {
				return a.refuse(ctx, cs, cand, err)
			}
			return a.acceptContainer(ctx, cs, cand, cand, ev)
		}
	}

	// Not in the informer's pod's namespace: the kernel names the pod.
	select {
	case a.correcting <- struct{}{}:
		defer func() { <-a.correcting }()
	case <-ctx.Done():
		return a.unavailable(ctx, cs, cand, context.Cause(ctx))
	}
	var errs []error
	buf := make([]byte, 64<<10)
	for _, p := range a.pods.LivePods() {
		if p.UID == cand.UID {
			continue
		}
		has, err := a.hasAddr(p.UID, cs.client.Addr(), buf)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !has {
			continue
		}
		ev, found, err := a.search(ctx, cs, p.UID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if found {
			if err := a.remember(p.UID, ev); err != nil {
				return a.refuse(ctx, cs, cand, err)
			}
			return a.acceptContainer(ctx, cs, cand, p, ev)
		}
	}
	if len(errs) > 0 {
		// Some namespace could not be read: it might hold the
		// connection, so this is no refusal.
		return a.unavailable(ctx, cs, cand, errors.Join(errs...))
	}
	return a.refuse(ctx, cs, cand, fmt.Errorf("connection %s -> %s is in no known pod's network namespace: %w", cs.client, cs.server, ErrRefused))
}

// acceptContainer is accept after, in container mode, naming the container
// whose process holds the socket: a connection in the pod's namespace that
// no container of the pod holds is refused.
func (a *Attester) acceptContainer(ctx context.Context, cs *connState, cand, pod podresolve.Pod, ev evidence) (podresolve.Pod, error) {
	if a.cpods == nil {
		return a.accept(ctx, cs, cand, pod, ev), nil
	}
	_, c, err := a.containerOf(ctx, cs, map[string]types.UID{string(pod.UID): pod.UID}, ev.inode)
	switch {
	case errors.Is(err, ErrUnavailable):
		return a.unavailable(ctx, cs, cand, err)
	case err != nil:
		return a.refuse(ctx, cs, cand, err)
	}
	a.m.containers.WithLabelValues(CtrContainer).Inc()
	pod.Container = &c
	return a.accept(ctx, cs, cand, pod, ev), nil
}

func (a *Attester) accept(ctx context.Context, cs *connState, cand, pod podresolve.Pod, ev evidence) podresolve.Pod {
	cs.verdict.Store(&verdict{uid: pod.UID, container: pod.Container})
	result, level, msg := ResultAttested, slog.LevelInfo, "connection attested"
	if pod.UID != cand.UID {
		result, level, msg = ResultCorrected, slog.LevelWarn, "connection attested to another pod than the informer's"
	}
	a.m.results.WithLabelValues(result).Inc()
	if a.log.Enabled(ctx, level) {
		attrs := []slog.Attr{
			slog.String(a.addrKey, cs.client.Addr().String()),
			slog.String("namespace", pod.Namespace), slog.String("pod", pod.Name), slog.String("uid", string(pod.UID)),
			slog.String("result", result),
			slog.Int("pid", int(ev.pid)),
			slog.Uint64("socket_inode", ev.inode),
			slog.Int("client_port", int(cs.client.Port())),
		}
		if d, err := openProc(a.root, int(ev.pid)); err == nil {
			if ino := d.netnsInode(); ino != 0 {
				attrs = append(attrs, slog.Uint64("netns_inode", ino))
			}
			d.close()
		}
		if c := pod.Container; c != nil {
			attrs = append(attrs, containerAttrs(c)...)
		}
		if result == ResultCorrected {
			attrs = append(attrs, slog.String("informer_namespace", cand.Namespace), slog.String("informer_pod", cand.Name),
				slog.String("informer_uid", string(cand.UID)))
		}
		a.log.LogAttrs(ctx, level, msg, attrs...)
	}
	return pod
}

func (a *Attester) refuse(ctx context.Context, cs *connState, cand podresolve.Pod, err error) (podresolve.Pod, error) {
	a.m.results.WithLabelValues(ResultRefused).Inc()
	a.log.LogAttrs(ctx, slog.LevelWarn, "connection refused: the kernel does not place it in the informer's pod", slog.String(a.addrKey, cs.client.Addr().String()),
		slog.String("informer_namespace", cand.Namespace), slog.String("informer_pod", cand.Name), slog.String("informer_uid", string(cand.UID)),
		slog.Int("client_port", int(cs.client.Port())), slog.String("error", err.Error()))
	return podresolve.Pod{}, fmt.Errorf("attesting %s: %w", cs.client, err)
}

func (a *Attester) unavailable(ctx context.Context, cs *connState, cand podresolve.Pod, err error) (podresolve.Pod, error) {
	a.m.results.WithLabelValues(ResultUnavailable).Inc()
	a.log.LogAttrs(ctx, slog.LevelWarn, "connection not attested: kernel evidence unreadable", slog.String(a.addrKey, cs.client.Addr().String()),
		slog.String("informer_namespace", cand.Namespace), slog.String("informer_pod", cand.Name), slog.String("error", err.Error()))
	return podresolve.Pod{}, fmt.Errorf("attesting %s: %w: %w", cs.client, ErrUnavailable, err)
}

// remember records the attested socket for its pod, and refuses a socket
// already attested for an earlier connection: one client socket is one
// connection, so a second connection matching it was forged on a 4-tuple
// whose agent end is gone while the victim's end lingers.
func (a *Attester) remember(uid types.UID, ev evidence) error {
	a.mu.Lock()
	p := a.procs[uid]
	a.mu.Unlock()
	if p == nil || ev.inode == 0 {
		return nil
	}
	ino := uint32(ev.inode)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, seen := range p.inodes {
		if seen == ino {
			return fmt.Errorf("socket inode %d was already attested for another connection: %w", ev.inode, ErrRefused)
		}
	}
	p.inodes[p.nextIno] = ino
	p.nextIno = (p.nextIno + 1) % inodeRing
	return nil
}

// search looks for the connection in the network namespace of pod uid.
// found is false when the pod has no process (after a scan) or its
// namespace does not hold the connection; err is for unreadable evidence.
func (a *Attester) search(ctx context.Context, cs *connState, uid types.UID) (evidence, bool, error) {
	for attempt := 0; ; attempt++ {
		p := a.proc(uid)
		if p == nil {
			if attempt > 0 || a.knownAbsent(uid) {
				return evidence{}, false, nil
			}
			if err := a.rescan(ctx, time.Now()); err != nil {
				return evidence{}, false, err
			}
			continue
		}
		ev, found, err := a.searchProc(ctx, cs, uid, p)
		if errors.Is(err, errGone) && attempt == 0 {
			a.forget(uid, p)
			if err := a.rescan(ctx, time.Now()); err != nil {
				return evidence{}, false, err
			}
			continue
		}
		if errors.Is(err, errGone) {
			return evidence{}, false, nil
		}
		return ev, found, err
	}
}

func (a *Attester) searchProc(ctx context.Context, cs *connState, uid types.UID, p *podProc) (evidence, bool, error) {
	v6 := cs.client.Addr().Is6()
	for _, fam := range [2]bool{v6, true} {
		lines, err := a.table(ctx, p, uid, fam, cs.server, cs.accepted)
		if err != nil {
			return evidence{}, false, err
		}
		if sl, ok := findSocket(lines, needle(cs.client, cs.server, fam)); ok {
			return evidence{pid: p.pid, inode: sl.inode}, true, nil
		}
		if v6 {
			break
		}
	}
	return evidence{}, false, nil
}

// table returns the lines of pod uid's TCP table (IPv6 if v6) whose remote
// end is server, from a read that started after since. Connections
// accepted while a read is running share the next one.
func (a *Attester) table(ctx context.Context, p *podProc, uid types.UID, v6 bool, server netip.AddrPort, since time.Time) ([]byte, error) {
	srv := string(serverField(server, v6))
	p.mu.Lock()
	if c := p.cur; c != nil && c.v6 == v6 && c.server == srv && c.start.After(since) {
		p.mu.Unlock()
		return c.wait(ctx)
	}
	if c := p.cur; c != nil && c.v6 == v6 && c.server == srv && !c.finished() {
		if n := p.next; n != nil && n.v6 == v6 && n.server == srv {
			p.mu.Unlock()
			return n.wait(ctx)
		}
		n := &tableRead{v6: v6, server: srv, done: make(chan struct{})}
		p.next = n
		p.mu.Unlock()
		// Bounded by one table read; n must run even if ctx ends, for
		// the connections queued on it.
		<-c.done
		p.mu.Lock()
		n.start = time.Now()
		p.cur, p.next = n, nil
		p.mu.Unlock()
		a.run(n, p, uid)
		return p.release(n)
	}
	n := &tableRead{v6: v6, server: srv, start: time.Now(), done: make(chan struct{})}
	p.cur = n
	p.mu.Unlock()
	a.run(n, p, uid)
	return p.release(n)
}

// release returns the finished read's lines to the connection that ran it
// and drops the pod's reference to them: only connections that joined
// while it ran need them, and a pod's idle cache entry stays small.
func (p *podProc) release(n *tableRead) ([]byte, error) {
	p.mu.Lock()
	if p.cur == n {
		p.cur = nil
	}
	p.mu.Unlock()
	return n.lines, n.err
}

func (t *tableRead) finished() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

func (t *tableRead) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-t.done:
		return t.lines, t.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// run reads the table of p's process, after checking that the process
// still belongs to pod uid (through the same /proc/<pid> handle, so a
// reused PID cannot answer for it).
func (a *Attester) run(t *tableRead, p *podProc, uid types.UID) {
	defer close(t.done)
	a.reads.Add(1)
	a.tableSem <- struct{}{}
	defer func() { <-a.tableSem }()
	d, err := openProc(a.root, int(p.pid))
	if err != nil {
		t.err = err
		return
	}
	defer d.close()
	var cg [4096]byte
	b, err := d.readSmall("cgroup", cg[:])
	if err != nil {
		t.err = err
		return
	}
	if got := podUIDFromCgroup(b); got != string(uid) {
		t.err = fmt.Errorf("process %d left pod %s: %w", p.pid, uid, errGone)
		return
	}
	buf := make([]byte, 64<<10)
	t.lines, t.err = d.readTable(t.v6, []byte(t.server), buf)
}

// hasAddr reports whether pod uid's namespace has addr as a local address.
// A pod without a known process cannot hold the connection as far as the
// kernel can tell: false.
func (a *Attester) hasAddr(uid types.UID, addr netip.Addr, buf []byte) (bool, error) {
	p := a.proc(uid)
	if p == nil {
		return false, nil
	}
	d, err := openProc(a.root, int(p.pid))
	if errors.Is(err, errGone) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer d.close()
	has, err := d.hasLocalAddr(addr, buf)
	if errors.Is(err, errGone) {
		return false, nil
	}
	return has, err
}

func (a *Attester) proc(uid types.UID) *podProc {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.procs[uid]
}

// knownAbsent reports whether the last scan, still recent enough that a
// new one would wait, found no process of pod uid although the informer
// served it: a rescan now would only delay the answer.
func (a *Attester) knownAbsent(uid types.UID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.absent[uid]
	return ok && time.Since(a.lastScan) < a.minRescan
}

func (a *Attester) forget(uid types.UID, p *podProc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.procs[uid] == p {
		delete(a.procs, uid)
	}
}

// rescan scans /proc unless a scan started after need, waiting first when
// the last one started less than MinRescanInterval ago.
func (a *Attester) rescan(ctx context.Context, need time.Time) error {
	a.scanMu.Lock()
	defer a.scanMu.Unlock()
	a.mu.Lock()
	last := a.lastScan
	a.mu.Unlock()
	if last.After(need) {
		return nil
	}
	if err := waitOut(ctx, a.minRescan-time.Since(last)); err != nil {
		return err
	}
	_, err := a.scan()
	return err
}

// waitOut waits d, or until ctx ends, and then returns its cause.
func waitOut(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// scan rebuilds the per-pod cache from /proc, keeping only pods the
// informer serves now (so the cache never outgrows the informer's pods).
// It returns how many processes it read.
func (a *Attester) scan() (int, error) {
	a.mu.Lock()
	a.lastScan = time.Now()
	a.mu.Unlock()
	a.m.scans.Inc()
	live := a.pods.LivePods()
	if a.cpods != nil {
		live = append(live, a.cpods.HostNetworkPods()...)
	}
	known := make(map[string]types.UID, len(live))
	for _, p := range live {
		known[string(p.UID)] = p.UID
	}
	found, procs, err := scanProc(a.root, func(raw string) (types.UID, bool) {
		uid, ok := known[raw]
		return uid, ok
	})
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	next := make(map[types.UID]*podProc, len(found))
	for uid, pid := range found {
		old := a.procs[uid]
		switch {
		case old != nil && old.pid == pid:
			next[uid] = old
		case old != nil:
			p := &podProc{pid: pid}
			old.mu.Lock()
			p.inodes, p.nextIno = old.inodes, old.nextIno
			old.mu.Unlock()
			next[uid] = p
		default:
			next[uid] = &podProc{pid: pid}
		}
	}
	a.procs = next
	absent := make(map[types.UID]struct{})
	for _, uid := range known {
		if _, ok := found[uid]; !ok {
			absent[uid] = struct{}{}
		}
	}
	a.absent = absent
	return procs, nil
}
