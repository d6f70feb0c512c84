package attest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/podresolve"
)

func TestContainerIDFromCgroup(t *testing.T) {
	const uid = "6f1c7e3a-2b4d-4c5e-9f60-718293a4b5c6"
	const us = "6f1c7e3a_2b4d_4c5e_9f60_718293a4b5c6"
	id := strings.Repeat("0123456789abcdef", 4)
	other := strings.Repeat("fedcba9876543210", 4)
	tests := []struct {
		name, file, want string
	}{
		{"cgroupfs v1 containerd", "12:pids:/kubepods/besteffort/pod" + uid + "/" + id + "\n11:memory:/kubepods/besteffort/pod" + uid + "/" + id + "\n0::/\n", id},
		{"cgroupfs v2", "0::/kubepods/burstable/pod" + uid + "/" + id + "\n", id},
		{"cgroupfs cri-o", "0::/kubepods/pod" + uid + "/crio-" + id + "\n", id},
		{"systemd v2 containerd", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + id + ".scope\n", id},
		{"systemd v1 cri-o", "4:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/crio-" + id + ".scope\n", id},
		{"systemd docker", "0::/kubepods.slice/kubepods-pod" + us + ".slice/docker-" + id + ".scope\n", id},
		{"cgroup namespace relative", "0::/../../kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + id + ".scope\n", id},
		{"a sub-cgroup below the container", "0::/kubepods/pod" + uid + "/" + id + "/init\n", id},
		{"cri-o's conmon is no container", "0::/kubepods.slice/kubepods-pod" + us + ".slice/crio-conmon-" + id + ".scope\n", ""},
		{"the pod's own cgroup", "0::/kubepods/besteffort/pod" + uid + "\n", ""},
		{"another pod's container", "0::/kubepods/pod11111111-2222-3333-4444-555555555555/" + id + "\n", ""},
		{"a short ID", "0::/kubepods/pod" + uid + "/0123abcd\n", ""},
		{"upper-case hex", "0::/kubepods/pod" + uid + "/" + strings.ToUpper(id) + "\n", ""},
		{"hierarchies disagree", "12:pids:/kubepods/pod" + uid + "/" + id + "\n11:memory:/kubepods/pod" + uid + "/" + other + "\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := containerIDFromCgroup([]byte(tc.file), uid); got != tc.want {
				t.Errorf("containerIDFromCgroup = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseFDInfo(t *testing.T) {
	for _, tc := range []struct {
		in       string
		mnt      int
		ino      uint64
		ok       bool
		describe string
	}{
		{"pos:\t0\nflags:\t02000002\nmnt_id:\t10\nino:\t1508574\n", 10, 1508574, true, "a socket"},
		{"pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t7\neventfd-count: 0\n", 16, 7, true, "more lines after"},
		{"pos:\t0\nflags:\t02\nmnt_id:\t10\n", 0, 0, false, "no ino line (before Linux 5.14)"},
		{"", 0, 0, false, "empty"},
	} {
		mnt, ino, ok := parseFDInfo([]byte(tc.in))
		if mnt != tc.mnt || ino != tc.ino || ok != tc.ok {
			t.Errorf("%s: parseFDInfo = %d, %d, %v; want %d, %d, %v", tc.describe, mnt, ino, ok, tc.mnt, tc.ino, tc.ok)
		}
	}
}

// containerPods is the fake informer's container side.
type containerPods struct {
	*fakeInformer
	containers map[types.UID][]podresolve.Container
	host       []podresolve.Pod
	hostAddr   netip.Addr
}

func (c *containerPods) Container(_ context.Context, uid types.UID, id string) (podresolve.Container, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ctr := range c.containers[uid] {
		if ctr.ID == id {
			return ctr, true
		}
	}
	return podresolve.Container{}, false
}

func (c *containerPods) HostNetworkPods() []podresolve.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]podresolve.Pod(nil), c.host...)
}

func (c *containerPods) Resolve(ctx context.Context, a netip.Addr) (podresolve.Pod, error) {
	if a.Unmap() == c.hostAddr {
		return podresolve.Pod{}, podresolve.ErrHostAddress
	}
	return c.fakeInformer.Resolve(ctx, a)
}

func (c *containerPods) PodByUID(uid types.UID) (podresolve.Pod, bool) {
	if p, ok := c.fakeInformer.PodByUID(uid); ok {
		return p, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.host {
		if p.UID == uid {
			return p, true
		}
	}
	return podresolve.Pod{}, false
}

// slogTo logs JSON to w, or nowhere when w is nil.
func slogTo(w io.Writer) *slog.Logger {
	if w == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}

func randCtrID(t testing.TB) string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// handOver gives the client end of a connection to a new process in
// network namespace ns and pod uid's container ctr (as its fd 3), and
// closes the test's own copy: only that process holds the socket then.
func (l *lab) handOver(ns string, client net.Conn, uid types.UID, ctr string) int {
	t := l.t
	f, err := client.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "sleep", "3600")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	placeInPod(t, cmd.Process.Pid, uid, ctr)
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	f.Close()
	client.Close()
	return cmd.Process.Pid
}

func ctrResults(a *Attester) map[string]float64 {
	m := map[string]float64{}
	for _, r := range []string{CtrContainer, CtrHostNetwork, CtrNoHolder, CtrUnknownContainer, CtrUnavailable} {
		m[r] = testutil.ToFloat64(a.m.containers.WithLabelValues(r))
	}
	return m
}

// TestContainerMode covers container mode on the real kernel: pod A's
// namespace, its processes in containers named by 64-digit IDs, and a
// hostNetwork pod H whose processes are in the agent's namespace (the
// lab's "host").
func TestContainerMode(t *testing.T) {
	l := newLab(t)
	inf := &containerPods{fakeInformer: &fakeInformer{}, containers: map[types.UID][]podresolve.Container{}, hostAddr: srv4}
	uidA, uidH := randUID(t), randUID(t)
	inf.add("a", uidA, ipA)
	ctrApp, ctrDebug, ctrUnlisted, ctrH := randCtrID(t), randCtrID(t), randCtrID(t), randCtrID(t)
	inf.containers[uidA] = []podresolve.Container{
		{ID: ctrApp, Name: "app", Kind: podresolve.ContainerRegular, Image: "registry.example/team/app:v1", ImageID: "registry.example/team/app@sha256:aa"},
		{ID: ctrDebug, Name: "debugger", Kind: podresolve.ContainerEphemeral, Image: "busybox:1", ImageID: "sha256:bb"},
	}
	hostPod := podresolve.Pod{Namespace: "ns", Name: "h", UID: uidH, ServiceAccount: "sa"}
	inf.host = []podresolve.Pod{hostPod}
	inf.containers[uidH] = []podresolve.Container{{ID: ctrH, Name: "exporter", Kind: podresolve.ContainerRegular, Image: "registry.example/exporter:v2", ImageID: "sha256:cc"}}
	nsA := l.netns([]netip.Addr{ipA}, []bool{true})
	// The pods' first processes: the sandboxes, which hold no sockets.
	l.process(nsA, uidA, strings.Repeat("a", 64))
	l.process(l.agent, uidH, strings.Repeat("b", 64))

	reg := prometheus.NewRegistry()
	a, err := New(Config{Resolver: inf, Pods: inf, Containers: inf, Registerer: reg, MinRescanInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st := a.Check(context.Background()); !st.Available {
		t.Fatalf("Check = %+v, want available", st)
	}

	t.Run("the container holding the socket", func(t *testing.T) {
		client, conn := l.dial(nsA, srv4)
		l.handOver(nsA, client, uidA, ctrApp)
		ctx := WithConn(context.Background(), conn)
		before := ctrResults(a)
		for range 2 {
			got, err := a.Resolve(ctx, ipA)
			if err != nil || got.UID != uidA || got.Container == nil || got.Container.Name != "app" {
				t.Fatalf("Resolve = %q %+v, %v; want pod A's container app", got.Name, got.Container, err)
			}
		}
		if n := ctrResults(a)[CtrContainer] - before[CtrContainer]; n != 1 {
			t.Errorf("container += %v over two requests on one connection, want 1", n)
		}
	})

	t.Run("an ephemeral container", func(t *testing.T) {
		client, conn := l.dial(nsA, srv4)
		l.handOver(nsA, client, uidA, ctrDebug)
		got, err := a.Resolve(WithConn(context.Background(), conn), ipA)
		if err != nil || got.Container == nil || got.Container.Kind != podresolve.ContainerEphemeral {
			t.Fatalf("Resolve = %+v, %v; want the ephemeral container", got.Container, err)
		}
	})

	t.Run("refused: held by no process of the pod", func(t *testing.T) {
		// The test process, which is no pod's, holds the client end.
		_, conn := l.dial(nsA, srv4)
		before := ctrResults(a)
		got, err := a.Resolve(WithConn(context.Background(), conn), ipA)
		if !errors.Is(err, ErrRefused) || got.UID != "" {
			t.Fatalf("Resolve = %q, %v; want ErrRefused", got.Name, err)
		}
		if n := ctrResults(a)[CtrNoHolder] - before[CtrNoHolder]; n != 1 {
			t.Errorf("no_holder += %v, want 1", n)
		}
	})

	t.Run("refused: a container the pod's status does not list", func(t *testing.T) {
		client, conn := l.dial(nsA, srv4)
		l.handOver(nsA, client, uidA, ctrUnlisted)
		got, err := a.Resolve(WithConn(context.Background(), conn), ipA)
		if !errors.Is(err, ErrRefused) || got.UID != "" {
			t.Fatalf("Resolve = %q, %v; want ErrRefused", got.Name, err)
		}
	})

	t.Run("a hostNetwork pod's container", func(t *testing.T) {
		client, conn := l.dial(l.agent, srv4)
		l.handOver(l.agent, client, uidH, ctrH)
		ctx := WithConn(context.Background(), conn)
		before := ctrResults(a)
		for range 2 {
			got, err := a.Resolve(ctx, srv4)
			if err != nil || got.UID != uidH || got.Container == nil || got.Container.Name != "exporter" {
				t.Fatalf("Resolve = %q %+v, %v; want pod H's container exporter", got.Name, got.Container, err)
			}
		}
		if n := ctrResults(a)[CtrHostNetwork] - before[CtrHostNetwork]; n != 1 {
			t.Errorf("host_network += %v, want 1", n)
		}
	})

	t.Run("a host process that is no pod's stays refused", func(t *testing.T) {
		_, conn := l.dial(l.agent, srv4)
		got, err := a.Resolve(WithConn(context.Background(), conn), srv4)
		if !errors.Is(err, podresolve.ErrHostAddress) || got.UID != "" {
			t.Fatalf("Resolve = %q, %v; want ErrHostAddress", got.Name, err)
		}
	})

	t.Run("the grant trace names the container and image", func(t *testing.T) {
		var buf bytes.Buffer
		a.log = slogTo(&buf)
		defer func() { a.log = slogTo(nil) }()
		client, conn := l.dial(nsA, srv4)
		l.handOver(nsA, client, uidA, ctrApp)
		ctx := WithConn(context.Background(), conn)
		got, err := a.Resolve(ctx, ipA)
		if err != nil {
			t.Fatal(err)
		}
		a.Served(ctx, got, "aws", "arn:aws:iam::1:role/r", "")
		out := buf.String()
		for _, want := range []string{`"container":"app"`, `"image":"registry.example/team/app:v1"`, `"image_id":"registry.example/team/app@sha256:aa"`, "credentials served"} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %s:\n%s", want, out)
			}
		}
	})
}

// TestContainerCheckWithoutPtrace runs the start-up check as an
// unprivileged user without CAP_SYS_PTRACE (the test binary again, under
// setpriv): container mode must say it cannot work, and why.
func TestContainerCheckWithoutPtrace(t *testing.T) {
	if os.Getenv("CREDBROKER_ATTEST_CHECK_HELPER") == "1" {
		inf := &containerPods{fakeInformer: &fakeInformer{}}
		a, err := New(Config{Resolver: inf, Pods: inf, Containers: inf, Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		st := a.Check(context.Background())
		os.Stdout.WriteString("AVAILABLE=" + map[bool]string{true: "yes", false: "no"}[st.Available] + " DETAIL=" + st.Detail + "\n")
		return
	}
	needRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	// A copy of the test binary that the unprivileged user may run (go
	// test's build directory is root's alone).
	dir, err := os.MkdirTemp("", "attest-check-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "attest.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(caps string) string {
		t.Helper()
		args := []string{"--reuid=64023", "--regid=64023", "--clear-groups", "--inh-caps=-all" + caps, "--ambient-caps=-all" + caps, "--bounding-set=-all" + caps,
			bin, "-test.run=^TestContainerCheckWithoutPtrace$", "-test.count=1"}
		cmd := exec.Command(setpriv, args...)
		cmd.Env = append(os.Environ(), "CREDBROKER_ATTEST_CHECK_HELPER=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := run(""); !strings.Contains(out, "AVAILABLE=no") || !strings.Contains(out, "needs CAP_SYS_PTRACE") {
		t.Errorf("without CAP_SYS_PTRACE: %s; want unavailable, naming the capability", out)
	}
	if out := run(",+sys_ptrace"); !strings.Contains(out, "AVAILABLE=yes") {
		t.Errorf("with CAP_SYS_PTRACE: %s; want available", out)
	}
}
