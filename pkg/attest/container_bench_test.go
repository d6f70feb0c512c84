package attest

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/podresolve"
)

// BenchmarkAttestContainerNewConnection: one new connection in container
// mode (the netns check, then the holder among the pod's processes, then
// its container), with 250 pods and 2,000 processes on the node. The
// client pod has 8 processes; one of them holds every connection the
// benchmark opens (b.N sockets), so the holder search reads up to b.N+3
// fdinfo files of it: run with -benchtime 100x and 1000x to see what an
// fd-heavy client costs.
func BenchmarkAttestContainerNewConnection(b *testing.B) {
	l := newLab(b)
	inf := &containerPods{fakeInformer: &fakeInformer{}, containers: map[types.UID][]podresolve.Container{}}
	uid := randUID(b)
	inf.add("client", uid, ipA)
	ctr := randCtrID(b)
	inf.containers[uid] = []podresolve.Container{{ID: ctr, Name: "app", Kind: podresolve.ContainerRegular, Image: "app:v1", ImageID: "sha256:aa"}}
	ns := l.netns([]netip.Addr{ipA}, []bool{true})
	l.process(ns, uid, strings.Repeat("a", 64))
	for range benchProcsPerPod - 2 {
		l.process(ns, uid, ctr)
	}
	for i := 1; i < benchPods; i++ {
		u := randUID(b)
		inf.add("pod-"+strconv.Itoa(i), u, netip.AddrFrom4([4]byte{10, 251, byte(i >> 8), byte(i)}))
		startPodProcesses(b, u, benchProcsPerPod)
	}
	a, err := New(Config{Resolver: inf, Pods: inf, Containers: inf, Registerer: prometheus.NewRegistry(), MinRescanInterval: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	if st := a.Check(context.Background()); !st.Available {
		b.Fatalf("Check = %+v", st)
	}
	// Every client end goes to one process of the pod's container.
	var clients []net.Conn
	inNetns(b, ns, func() {
		for range b.N {
			c, err := net.Dial("tcp", netip.AddrPortFrom(srv4, l.port()).String())
			if err != nil {
				b.Error(err)
				return
			}
			clients = append(clients, c)
		}
	})
	acc := make([]net.Conn, b.N)
	for i := range acc {
		if acc[i], err = l.ln.Accept(); err != nil {
			b.Fatal(err)
		}
	}
	files := make([]*os.File, len(clients))
	for i, c := range clients {
		if files[i], err = c.(*net.TCPConn).File(); err != nil {
			b.Fatal(err)
		}
	}
	cmd := exec.Command("sleep", "3600")
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	placeInPod(b, cmd.Process.Pid, uid, ctr)
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for i := range clients {
		files[i].Close()
		clients[i].Close()
	}
	b.Cleanup(func() {
		for _, c := range acc {
			c.Close()
		}
	})
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		ctx := WithConn(context.Background(), acc[i])
		t0 := time.Now()
		p, err := a.Resolve(ctx, ipA)
		if err != nil || p.Container == nil {
			b.Fatal(p.Container, err)
		}
		d = append(d, time.Since(t0))
	}
	b.StopTimer()
	reportQuantiles(b, d)
}
