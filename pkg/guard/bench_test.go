package guard

import (
	"net/netip"
	"sync/atomic"
	"testing"
)

// BenchmarkAllowParallel is the accepting path of the per-address limiter
// with 40 pods asking from every core, as the bench suite's headline does.
func BenchmarkAllowParallel(b *testing.B) {
	l, err := NewLimiter(LimiterConfig{RequestQPS: 1e12, RequestBurst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	addrs := make([]netip.Addr, 40)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
	}
	var worker atomic.Int32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(worker.Add(1))
		for pb.Next() {
			if ok, _ := l.allow(addrs[i%len(addrs)]); !ok {
				b.Error("refused")
				return
			}
			i++
		}
	})
}
