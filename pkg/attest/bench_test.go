package attest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Benchmarks on the real kernel (root): 250 pods, each a network namespace
// with 8 processes in its cgroup (2,000 processes), one of them linked to
// the agent's namespace. Run:
//
//	go test -run '^$' -bench . -benchtime 200x ./pkg/attest

const (
	benchPods        = 250
	benchProcsPerPod = 8
)

// benchNode builds the node once per benchmark.
func benchNode(b *testing.B) (*lab, *fakeInformer, string, *Attester) {
	l := newLab(b)
	inf, _, ns, _ := l.onePod("client")
	for i := 1; i < benchPods; i++ {
		u := randUID(b)
		inf.add("pod-"+strconv.Itoa(i), u, netip.AddrFrom4([4]byte{10, 251, byte(i >> 8), byte(i)}))
		startPodProcesses(b, u, benchProcsPerPod)
	}
	a, _ := newAttester(b, inf)
	if st := a.Check(context.Background()); !st.Available || st.PodsWithProcess != benchPods {
		b.Fatalf("Check = %+v", st)
	}
	return l, inf, ns, a
}

// startPodProcesses starts n sleeping processes in a new network namespace,
// all in pod uid's cgroup.
func startPodProcesses(b *testing.B, uid types.UID, n int) {
	dir := filepath.Join(cgroupParent, "pod"+string(uid), "ctr")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	script := fmt.Sprintf(`echo $$ > %s/cgroup.procs && exec unshare -n sh -c 'for i in $(seq %d); do sleep 3600 & done; exec sleep 3600'`, dir, n-1)
	cmd := exec.Command("sh", "-c", script)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Kill every process of the cgroup (the shell's children too).
		if pids, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range splitLines(pids) {
				if pid, err := strconv.Atoi(f); err == nil {
					p, _ := os.FindProcess(pid)
					_ = p.Kill()
				}
			}
		}
		_ = cmd.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for os.Remove(dir) != nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		_ = os.Remove(filepath.Dir(dir))
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if len(splitLines(pids)) >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("pod %s: %d processes, want %d", uid, len(splitLines(pids)), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func splitLines(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == '\n' {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	if start < len(b) {
		out = append(out, string(b[start:]))
	}
	return out
}

// dialMany opens n connections from netns ns and returns the accepted ends.
func (l *lab) dialMany(ns string, n int) []net.Conn {
	var clients []net.Conn
	var err error
	inNetns(l.t, ns, func() {
		for range n {
			var c net.Conn
			if c, err = net.Dial("tcp", netip.AddrPortFrom(srv4, l.port()).String()); err != nil {
				return
			}
			clients = append(clients, c)
		}
	})
	if err != nil {
		l.t.Fatal(err)
	}
	acc := make([]net.Conn, n)
	for i := range n {
		if acc[i], err = l.ln.Accept(); err != nil {
			l.t.Fatal(err)
		}
	}
	l.t.Cleanup(func() {
		for i := range n {
			clients[i].Close()
			acc[i].Close()
		}
	})
	return acc
}

func reportQuantiles(b *testing.B, d []time.Duration) {
	slices.Sort(d)
	q := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}

// BenchmarkAttestNewConnection: one new connection, attested alone (no
// read to share), with 250 pods and 2,000 processes on the node.
func BenchmarkAttestNewConnection(b *testing.B) {
	l, _, ns, a := benchNode(b)
	conns := l.dialMany(ns, b.N)
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		ctx := WithConn(context.Background(), conns[i])
		t0 := time.Now()
		if _, err := a.Resolve(ctx, ipA); err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(t0))
	}
	b.StopTimer()
	reportQuantiles(b, d)
}

// BenchmarkAttestKeepAlive: later requests on an attested connection.
func BenchmarkAttestKeepAlive(b *testing.B) {
	l, _, ns, a := benchNode(b)
	ctx := WithConn(context.Background(), l.dialMany(ns, 1)[0])
	if _, err := a.Resolve(ctx, ipA); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := a.Resolve(ctx, ipA); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttestBurst: 64 connections accepted together and attested
// concurrently, as under a burst of new connections: they share table
// reads. ns/op is per connection.
func BenchmarkAttestBurst(b *testing.B) {
	const burst = 64
	l, _, ns, a := benchNode(b)
	rounds := (b.N + burst - 1) / burst
	all := l.dialMany(ns, rounds*burst)
	b.ResetTimer()
	for r := range rounds {
		var wg sync.WaitGroup
		for _, c := range all[r*burst : (r+1)*burst] {
			wg.Go(func() {
				if _, err := a.Resolve(WithConn(context.Background(), c), ipA); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(rounds*burst), "µs/conn")
}

// BenchmarkAttestCorrected: the informer names another pod; the kernel's
// holder is found among the 250 pods.
func BenchmarkAttestCorrected(b *testing.B) {
	l, inf, ns, a := benchNode(b)
	other := inf.LivePods()[1]
	inf.say(ipA, other)
	conns := l.dialMany(ns, b.N)
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		p, err := a.Resolve(WithConn(context.Background(), conns[i]), ipA)
		if err != nil || p.UID == other.UID {
			b.Fatal(p.Name, err)
		}
		d = append(d, time.Since(t0))
	}
	b.StopTimer()
	reportQuantiles(b, d)
}

// BenchmarkScan: one /proc scan of the node's 2,000+ processes.
func BenchmarkScan(b *testing.B) {
	_, _, _, a := benchNode(b)
	b.ResetTimer()
	var procs int
	for range b.N {
		var err error
		if procs, err = a.scan(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(procs), "processes")
}
