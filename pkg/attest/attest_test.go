package attest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
)

func newAttester(t testing.TB, inf *fakeInformer) (*Attester, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := New(Config{Resolver: inf, Pods: inf, Registerer: reg, MinRescanInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return a, reg
}

func results(a *Attester) map[string]float64 {
	m := map[string]float64{}
	for _, r := range []string{ResultAttested, ResultCorrected, ResultRefused, ResultUnavailable} {
		m[r] = testutil.ToFloat64(a.m.results.WithLabelValues(r))
	}
	return m
}

func want(t *testing.T, a *Attester, attested, corrected, refused, unavailable float64) {
	t.Helper()
	got := results(a)
	exp := map[string]float64{ResultAttested: attested, ResultCorrected: corrected, ResultRefused: refused, ResultUnavailable: unavailable}
	for k, v := range exp {
		if got[k] != v {
			t.Errorf("credbroker_attest_total{result=%q} = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

var (
	ipA   = netip.MustParseAddr("10.250.0.2")
	ipB   = netip.MustParseAddr("10.250.0.3")
	ipN   = netip.MustParseAddr("10.250.0.5")
	ip6A  = netip.MustParseAddr("fd00:250::2")
	srv6  = netip.MustParseAddr("fd00:250::1")
	srv4  = netip.MustParseAddr("10.250.0.1")
	ctrID = "0123456789abcdef"
)

// TestKernel covers the outcomes on the real kernel. Pod A holds ipA (and
// a duplicate of ipB, to which the agent does not route); pod B holds
// ipB; namespace N holds ipN and is no pod.
func TestKernel(t *testing.T) {
	l := newLab(t)
	inf := &fakeInformer{}
	uidA, uidB := randUID(t), randUID(t)
	podA := inf.add("a", uidA, ipA, ip6A)
	podB := inf.add("b", uidB, ipB)
	nsA := l.netns([]netip.Addr{ipA, ipB, ip6A}, []bool{true, false, true})
	nsB := l.netns([]netip.Addr{ipB}, []bool{true})
	nsN := l.netns([]netip.Addr{ipN}, []bool{true})
	l.process(nsA, uidA, ctrID)
	l.process(nsB, uidB, ctrID)
	l.process(nsN, "", "")
	a, _ := newAttester(t, inf)
	if st := a.Check(context.Background()); !st.Available || st.PodsWithProcess != 2 {
		t.Fatalf("Check = %+v, want available with 2 pods with a process", st)
	}

	t.Run("attested, once per connection", func(t *testing.T) {
		_, conn := l.dial(nsA, srv4)
		ctx := WithConn(context.Background(), conn)
		before := results(a)[ResultAttested]
		for range 3 {
			got, err := a.Resolve(ctx, ipA)
			if err != nil || got.UID != uidA {
				t.Fatalf("Resolve = %v, %v; want pod A", got.Name, err)
			}
		}
		if n := results(a)[ResultAttested] - before; n != 1 {
			t.Errorf("attested %v times over 3 requests on one connection, want 1", n)
		}
	})

	t.Run("attested over IPv6", func(t *testing.T) {
		_, conn := l.dial(nsA, srv6)
		got, err := a.Resolve(WithConn(context.Background(), conn), ip6A)
		if err != nil || got.UID != uidA {
			t.Fatalf("Resolve = %v, %v; want pod A", got.Name, err)
		}
	})

	t.Run("corrected: a duplicate address, the informer stale", func(t *testing.T) {
		// The informer still gives ipB to pod A (whose namespace also has
		// it); the agent's route sends ipB to B, whose socket it is.
		inf.say(ipB, podA)
		defer inf.say(ipB, podB)
		_, conn := l.dial(nsB, srv4)
		before := results(a)
		got, err := a.Resolve(WithConn(context.Background(), conn), ipB)
		if err != nil || got.UID != uidB {
			t.Fatalf("Resolve = %v, %v; want pod B (the kernel's), never A", got.Name, err)
		}
		if n := results(a)[ResultCorrected] - before[ResultCorrected]; n != 1 {
			t.Errorf("corrected += %v, want 1", n)
		}
	})

	t.Run("ambiguous in the informer: the kernel decides", func(t *testing.T) {
		// Two live pods claim ipB (A's namespace has a duplicate of it);
		// the connection is in B's namespace.
		inf.contest(ipB, true)
		defer inf.contest(ipB, false)
		_, conn := l.dial(nsB, srv4)
		ctx := WithConn(context.Background(), conn)
		for range 2 {
			got, err := a.Resolve(ctx, ipB)
			if err != nil || got.UID != uidB {
				t.Fatalf("Resolve = %q, %v; want pod B, whose namespace holds the connection", got.Name, err)
			}
		}
	})

	t.Run("refused: a namespace that is no pod", func(t *testing.T) {
		inf.say(ipN, podA)
		_, conn := l.dial(nsN, srv4)
		before := results(a)
		got, err := a.Resolve(WithConn(context.Background(), conn), ipN)
		if !errors.Is(err, ErrRefused) || got.UID != "" {
			t.Fatalf("Resolve = %q, %v; want ErrRefused and no pod", got.Name, err)
		}
		if n := results(a)[ResultRefused] - before[ResultRefused]; n != 1 {
			t.Errorf("refused += %v, want 1", n)
		}
	})

	t.Run("refused: no connection in the context", func(t *testing.T) {
		_, err := a.Resolve(context.Background(), ipA)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("Resolve without a connection = %v, want ErrRefused", err)
		}
	})

	t.Run("refused: a second connection on an attested socket", func(t *testing.T) {
		// A forger that reset the agent's end of A's idle connection and
		// opened a new one on the same 4-tuple: the kernel shows A's old
		// socket, which was already attested for the first connection.
		_, conn := l.dial(nsA, srv4)
		if _, err := a.Resolve(WithConn(context.Background(), conn), ipA); err != nil {
			t.Fatal(err)
		}
		_, err := a.Resolve(WithConn(context.Background(), conn), ipA)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("second connection on one socket: %v, want ErrRefused", err)
		}
	})

	t.Run("a deleted pod is not served on its attested connection", func(t *testing.T) {
		_, conn := l.dial(nsB, srv4)
		ctx := WithConn(context.Background(), conn)
		if _, err := a.Resolve(ctx, ipB); err != nil {
			t.Fatal(err)
		}
		inf.remove(uidB)
		defer inf.add("b", uidB, ipB)
		got, err := a.Resolve(ctx, ipB)
		if err == nil || got.UID != "" {
			t.Fatalf("after delete: %q, %v; want an error", got.Name, err)
		}
	})

	t.Run("the pod's process replaced: found by a rescan", func(t *testing.T) {
		a.mu.Lock()
		old := a.procs[uidA].pid
		a.mu.Unlock()
		if err := syscall.Kill(int(old), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitGone(t, int(old))
		newPid := l.process(nsA, uidA, "fedcba9876543210")
		_, conn := l.dial(nsA, srv4)
		got, err := a.Resolve(WithConn(context.Background(), conn), ipA)
		if err != nil || got.UID != uidA {
			t.Fatalf("Resolve = %v, %v; want pod A", got.Name, err)
		}
		a.mu.Lock()
		pid := a.procs[uidA].pid
		a.mu.Unlock()
		if int(pid) != newPid {
			t.Errorf("cached pid %d, want the new process %d", pid, newPid)
		}
	})
}

func waitGone(t *testing.T, pid int) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestCheckNoVisibleProcess: pods the informer knows, none with a process
// under a cgroup named after it (a sandboxed runtime): unavailable, said at
// start.
func TestCheckNoVisibleProcess(t *testing.T) {
	needRoot(t)
	inf := &fakeInformer{}
	inf.add("x", randUID(t), ipA)
	a, _ := newAttester(t, inf)
	st := a.Check(context.Background())
	if st.Available || !strings.Contains(st.Detail, "none of the 1 running pods") {
		t.Fatalf("Check = %+v, want unavailable naming the invisible pods", st)
	}
	if v := testutil.ToFloat64(a.m.available); v != 0 {
		t.Errorf("credbroker_attest_available = %v, want 0", v)
	}
}

// TestNoConnectionRefusedWithoutKernel: a request without a connection in
// its context is refused before anything is read.
func TestNoConnectionRefusedWithoutKernel(t *testing.T) {
	inf := &fakeInformer{}
	p := inf.add("x", "uid-x", ipA)
	a, _ := newAttester(t, inf)
	got, err := a.Resolve(context.Background(), ipA)
	if !errors.Is(err, ErrRefused) || got.UID != "" {
		t.Fatalf("Resolve = %v, %v; want ErrRefused, never %s", got, err, p.Name)
	}
	if inf.calls != 0 {
		t.Errorf("informer asked %d times, want 0", inf.calls)
	}
}

// TestBurstSharesTableReads: connections accepted together share reads of
// the pod's TCP table (each read walks the host's whole connection hash).
func TestBurstSharesTableReads(t *testing.T) {
	l := newLab(t)
	inf, uid, ns, _ := l.onePod("a")
	a, _ := newAttester(t, inf)
	a.Check(context.Background())
	const n = 32
	conns := l.dialMany(ns, n)
	errs := make(chan error, n)
	for _, c := range conns {
		go func() {
			p, err := a.Resolve(WithConn(context.Background(), c), ipA)
			if err == nil && p.UID != uid {
				err = errors.New("wrong pod " + p.Name)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if r := a.reads.Load(); r >= n/2 {
		t.Errorf("%d table reads for %d connections accepted together, want them shared (fewer than %d)", r, n, n/2)
	} else {
		t.Logf("%d table reads for %d connections", r, n)
	}
}

// TestStaleClientSocketNotEvidence: a client socket whose server end sent
// its FIN (CLOSE_WAIT: the agent restarted and the client never closed) is
// not evidence for a new connection on the same 4-tuple.
func TestStaleClientSocketNotEvidence(t *testing.T) {
	l := newLab(t)
	inf, uid, ns, _ := l.onePod("a")
	a, _ := newAttester(t, inf)
	client, conn := l.dial(ns, srv4)
	// The agent's end closes; the client's stays open, in CLOSE_WAIT.
	ctx := WithConn(context.Background(), conn)
	conn.Close()
	waitState(t, a, uid, client, 0x08)
	_, err := a.Resolve(ctx, ipA)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Resolve over a CLOSE_WAIT client socket: %v, want ErrRefused", err)
	}
}

// waitState polls the pod's TCP table until the client socket is in state.
func waitState(t *testing.T, a *Attester, uid types.UID, client net.Conn, state uint8) {
	t.Helper()
	a.Check(context.Background())
	c := client.LocalAddr().(*net.TCPAddr).AddrPort()
	s := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	ndl := needle(c, s, false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := openProc(a.root, int(a.proc(uid).pid))
		if err != nil {
			t.Fatal(err)
		}
		lines, err := d.readTable(false, serverField(s, false), make([]byte, 64<<10))
		d.close()
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.Index(string(lines), string(ndl)); i >= 0 {
			st, _ := strconv.ParseUint(string(lines[i+len(ndl):i+len(ndl)+2]), 16, 8)
			if uint8(st) == state {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("client socket never reached state %#x", state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMappedIPv4: a client on a dual-stack AF_INET6 socket (as Java's)
// connecting to an IPv4 address shows in tcp6 as ::ffff:X.
func TestMappedIPv4(t *testing.T) {
	l := newLab(t)
	inf, uid, ns, _ := l.onePod("a")
	a, _ := newAttester(t, inf)
	var fd int
	var err error
	inNetns(t, ns, func() {
		if fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return
		}
		err = unix.Connect(fd, &unix.SockaddrInet6{Port: int(l.port()), Addr: netip.AddrFrom16(srv4.As16()).As16()})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	conn, err := l.ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p, err := a.Resolve(WithConn(context.Background(), conn), ipA)
	if err != nil || p.UID != uid {
		t.Fatalf("Resolve = %q, %v; want pod a", p.Name, err)
	}
}

// TestAbsentPodAnsweredWithoutWaiting: the informer still gives an address
// to a pod whose sandbox is gone (no process at the last scan), and a
// namespace that is no pod holds it. Each new connection is refused at
// once: it does not wait for the next /proc scan (up to
// MinRescanInterval), which would outlast an SDK's one-second timeout.
func TestAbsentPodAnsweredWithoutWaiting(t *testing.T) {
	l := newLab(t)
	inf := &fakeInformer{}
	uidA, uidGone := randUID(t), randUID(t)
	inf.add("a", uidA, ipA)
	inf.add("gone", uidGone, ipN)
	nsA := l.netns([]netip.Addr{ipA}, []bool{true})
	nsN := l.netns([]netip.Addr{ipN}, []bool{true})
	l.process(nsA, uidA, ctrID)
	l.process(nsN, "", "")
	a, err := New(Config{Resolver: inf, Pods: inf, Registerer: prometheus.NewRegistry(), MinRescanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st := a.Check(context.Background()); !st.Available {
		t.Fatalf("Check = %+v, want available", st)
	}
	for i := range 3 {
		_, conn := l.dial(nsN, srv4)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := a.Resolve(WithConn(ctx, conn), ipN)
		cancel()
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("connection %d: %v; want ErrRefused at once, not a wait for the next scan", i, err)
		}
	}
	if n := testutil.ToFloat64(a.m.scans); n != 1 {
		t.Errorf("%v scans, want 1 (the start-up check's)", n)
	}
}
