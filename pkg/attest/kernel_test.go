package attest

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/podresolve"
)

// The tests below run on the real kernel, as root: network namespaces
// joined by veth pairs to an "agent" namespace holding the listener, and
// processes placed in cgroup v1 directories named as the kubelet's
// cgroupfs driver names them. The kubelet's path segments sit below a
// test-only parent: a kubelet running on this machine at the same time
// (the real-node tests) removes pod cgroups it does not know under its own
// kubepods tree.

// cgroupParent is the test's cgroup v1 hierarchy (the pids controller:
// the test leaves the memory controller, which the machine's supervisor
// uses, alone).
const cgroupParent = "/sys/fs/cgroup/pids/credbroker-attest-test/kubepods/besteffort"

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, cgroups)")
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err != nil {
		t.Skip("needs the cgroup v1 pids controller at /sys/fs/cgroup/pids")
	}
}

func randUID(t testing.TB) types.UID {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return types.UID(fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]))
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// lab is an agent namespace with a listener and pod namespaces around it.
type lab struct {
	t      testing.TB
	id     string
	agent  string // netns name
	server netip.Addr
	ln     net.Listener
	n      int
}

func newLab(t testing.TB) *lab {
	needRoot(t)
	var b [3]byte
	_, _ = rand.Read(b[:])
	l := &lab{t: t, id: fmt.Sprintf("%x", b), server: netip.MustParseAddr("10.250.0.1")}
	l.agent = "hea-" + l.id
	run(t, "ip", "netns", "add", l.agent)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.agent).Run() })
	run(t, "ip", "-n", l.agent, "link", "set", "lo", "up")
	run(t, "ip", "-n", l.agent, "addr", "add", "10.250.0.1/32", "dev", "lo")
	inNetns(t, l.agent, func() {
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		l.ln = ln
	})
	t.Cleanup(func() { l.ln.Close() })
	return l
}

func (l *lab) port() uint16 { return uint16(l.ln.Addr().(*net.TCPAddr).Port) }

// inNetns runs f on a thread in the named network namespace; sockets f
// creates stay there.
func inNetns(t testing.TB, name string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := os.Open("/var/run/netns/" + name)
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with the goroutine.
			t.Error(err)
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
}

// netns creates a namespace linked to the agent's by a veth pair, with
// addrs on its end; the agent routes to each addr whose route is true
// through it.
func (l *lab) netns(addrs []netip.Addr, route []bool) string {
	t := l.t
	l.n++
	name := fmt.Sprintf("hep-%s-%d", l.id, l.n)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	host, peer := fmt.Sprintf("hv%s%d", l.id, l.n), "eth0"
	run(t, "ip", "-n", l.agent, "link", "add", host, "type", "veth", "peer", "name", peer, "netns", name)
	run(t, "ip", "-n", l.agent, "link", "set", host, "up")
	// IPv6 neighbour discovery answers only for addresses of the link
	// asked on: the agent's address goes on every link.
	run(t, "ip", "-n", l.agent, "addr", "add", "fd00:250::1/128", "dev", host, "nodad")
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "-n", name, "link", "set", peer, "up")
	for i, a := range addrs {
		bits := "/32"
		if a.Is6() {
			bits = "/128"
			run(t, "ip", "-n", name, "addr", "add", a.String()+bits, "dev", peer, "nodad")
		} else {
			run(t, "ip", "-n", name, "addr", "add", a.String()+bits, "dev", peer)
		}
		if route[i] {
			run(t, "ip", "-n", l.agent, "route", "add", a.String()+bits, "dev", host)
		}
	}
	run(t, "ip", "-n", name, "route", "add", "10.250.0.1/32", "dev", peer)
	run(t, "ip", "-n", name, "route", "add", "fd00:250::1/128", "dev", peer)
	return name
}

// process starts a sleeping process in netns name and, unless uid is
// empty, in pod uid's cgroup (container ctr). It returns its PID.
// onePod is the scene most tests start from: a pod named name at ipA,
// known to the returned informer, with one process in a network namespace
// of its own that holds ipA. It returns the pod's UID, the namespace and
// the process's PID.
func (l *lab) onePod(name string) (inf *fakeInformer, uid types.UID, ns string, pid int) {
	inf = &fakeInformer{}
	uid = randUID(l.t)
	inf.add(name, uid, ipA)
	ns = l.netns([]netip.Addr{ipA}, []bool{true})
	return inf, uid, ns, l.process(ns, uid, ctrID)
}

func (l *lab) process(name string, uid types.UID, ctr string) int {
	t := l.t
	cmd := exec.Command("ip", "netns", "exec", name, "sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if uid != "" {
		placeInPod(t, cmd.Process.Pid, uid, ctr)
	}
	// After placeInPod's: cleanups run last first, and a cgroup with a
	// process in it cannot be removed.
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Wait until ip has exec'd sleep in the namespace (it is the same
	// PID), so the process's net/ files are the pod's.
	deadline := time.Now().Add(5 * time.Second)
	for {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
		if strings.HasSuffix(exe, "/sleep") {
			return cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not exec sleep (exe %q)", cmd.Process.Pid, exe)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func placeInPod(t testing.TB, pid int, uid types.UID, ctr string) {
	t.Helper()
	podDir := filepath.Join(cgroupParent, "pod"+string(uid))
	dir := filepath.Join(podDir, ctr)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The processes are killed by then (cleanups run last first).
		_ = os.Remove(dir)
		_ = os.Remove(podDir)
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dial connects from netns name to the lab's listener and returns both
// ends.
func (l *lab) dial(name string, server netip.Addr) (client, accepted net.Conn) {
	t := l.t
	var err error
	inNetns(t, name, func() {
		client, err = net.Dial("tcp", netip.AddrPortFrom(server, l.port()).String())
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	accepted, err = l.ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return client, accepted
}

// fakeInformer is the informer's side: which pod it says owns an address,
// and which pods are live.
type fakeInformer struct {
	mu   sync.Mutex
	byIP map[netip.Addr]podresolve.Pod
	// ambiguous addresses are claimed by more than one live pod.
	ambiguous map[netip.Addr]bool
	pods      []podresolve.Pod
	calls     int
}

func (f *fakeInformer) Resolve(_ context.Context, a netip.Addr) (podresolve.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.ambiguous[a.Unmap()] {
		return podresolve.Pod{}, podresolve.ErrAmbiguous
	}
	p, ok := f.byIP[a.Unmap()]
	if !ok {
		return podresolve.Pod{}, podresolve.ErrNotFound
	}
	return p, nil
}

func (f *fakeInformer) PodByUID(uid types.UID) (podresolve.Pod, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pods {
		if p.UID == uid {
			return p, true
		}
	}
	return podresolve.Pod{}, false
}

func (f *fakeInformer) LivePods() []podresolve.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]podresolve.Pod(nil), f.pods...)
}

func (f *fakeInformer) add(name string, uid types.UID, ips ...netip.Addr) podresolve.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byIP == nil {
		f.byIP = make(map[netip.Addr]podresolve.Pod)
	}
	p := podresolve.Pod{Namespace: "ns", Name: name, UID: uid, ServiceAccount: "sa", IPs: ips}
	f.pods = append(f.pods, p)
	for _, ip := range ips {
		f.byIP[ip] = p
	}
	return p
}

// contest makes the informer answer ErrAmbiguous for addr (two live pods
// claim it), or stop doing so.
func (f *fakeInformer) contest(addr netip.Addr, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ambiguous == nil {
		f.ambiguous = make(map[netip.Addr]bool)
	}
	f.ambiguous[addr] = on
}

// say makes the informer name pod p for addr (a stale status).
func (f *fakeInformer) say(addr netip.Addr, p podresolve.Pod) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byIP[addr] = p
}

func (f *fakeInformer) remove(uid types.UID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.pods {
		if p.UID == uid {
			f.pods = append(f.pods[:i], f.pods[i+1:]...)
			break
		}
	}
	for a, p := range f.byIP {
		if p.UID == uid {
			delete(f.byIP, a)
		}
	}
}
