package podresolve

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// podIP4 gives pod i a unique IPv4 address in 10.0.0.0/8.
func podIP4(i int) string {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
}

func manyPods(n int) []*corev1.Pod {
	pods := make([]*corev1.Pod, n)
	for i := range pods {
		pods[i] = fullPod(fmt.Sprintf("pod-%05d", i), podIP4(i+1))
	}
	return pods
}

// BenchmarkResolveHit measures the hot path: an address owned by exactly
// one pod, on a node with a full complement of dual-stack pods.
func BenchmarkResolveHit(b *testing.B) {
	const n = 110 // the kubelet's default max pods
	h := newHarness(b, harnessOpts{}, manyPods(n)...)
	addrs := make([]netip.Addr, 0, 2*n)
	for i := range n {
		addrs = append(addrs, netip.MustParseAddr(podIP4(i+1)), netip.MustParseAddr(v6FromV4(podIP4(i+1))))
	}
	ctx := b.Context()

	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := h.r.Resolve(ctx, addrs[i%len(addrs)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := h.r.Resolve(ctx, addrs[i%len(addrs)]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// heapPerPod indexes n realistic pods through the real informer and returns
// the live heap the resolver (informer store included) holds per pod.
func heapPerPod(tb testing.TB, n int) float64 {
	pods := manyPods(n)
	var h *harness
	var before runtime.MemStats
	h = newHarness(tb, harnessOpts{noRun: true}, pods...)
	pods = nil
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)

	h.run(tb)
	h.waitSynced(tb)
	if got := h.r.Len(); got != n {
		tb.Fatalf("Len() = %d, want %d", got, n)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(h)
	return (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(n)
}

// BenchmarkHeapPerPod reports heap bytes per indexed pod (heap-B/pod);
// time per op is meaningless here. Run with -benchtime=1x.
func BenchmarkHeapPerPod(b *testing.B) {
	var sum float64
	for range b.N {
		sum += heapPerPod(b, 5000)
	}
	b.ReportMetric(sum/float64(b.N), "heap-B/pod")
}
