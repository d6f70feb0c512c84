package attest

import (
	"fmt"
	"runtime"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

// TestCacheMemoryPerPod: the per-pod cache costs at most 256 bytes of heap
// per pod (the budget), UID strings being the informer's.
func TestCacheMemoryPerPod(t *testing.T) {
	const n = 10000
	uids := make([]types.UID, n)
	for i := range uids {
		uids[i] = types.UID(fmt.Sprintf("%08x-0000-4000-8000-000000000000", i))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := make(map[types.UID]*podProc, n)
	for i, uid := range uids {
		m[uid] = &podProc{pid: int32(i + 1)}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per pod (%d pods)", per, n)
	if per > 256 {
		t.Errorf("%.0f bytes per pod, want at most 256", per)
	}
	runtime.KeepAlive(m)
}
