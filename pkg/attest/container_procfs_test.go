package attest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
)

// fakeProc writes a process into a /proc layout under root: its cgroup
// file and one fdinfo file per (mount, inode) pair.
func fakeProc(t *testing.T, root string, pid int, cgroup string, files ...[2]uint64) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.MkdirAll(filepath.Join(dir, "fdinfo"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		info := fmt.Sprintf("pos:\t0\nflags:\t02000002\nmnt_id:\t%d\nino:\t%d\n", f[0], f[1])
		if err := os.WriteFile(filepath.Join(dir, "fdinfo", fmt.Sprint(i)), []byte(info), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFindHolderProcLayout: the holder search on a /proc layout in a
// temporary directory: only the pod's processes are searched, the socket
// is matched on the socket filesystem's mount and inode, the container
// comes from the cgroup, a process that appeared after the listing is
// found by the next one, and the per-connection budget holds.
func TestFindHolderProcLayout(t *testing.T) {
	root := t.TempDir()
	const sockMnt = 9
	uidA, uidB := types.UID("6f1c7e3a-2b4d-4c5e-9f60-718293a4b5c6"), types.UID("11111111-2222-3333-4444-555555555555")
	ctrA, ctrB := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	cg := func(uid types.UID, ctr string) string {
		return fmt.Sprintf("12:pids:/kubepods/besteffort/pod%s/%s\n0::/kubepods/besteffort/pod%s/%s\n", uid, ctr, uid, ctr)
	}
	fakeProc(t, root, 100, cg(uidA, strings.Repeat("0", 64))) // the sandbox
	fakeProc(t, root, 110, cg(uidA, ctrA), [2]uint64{12, 555}, [2]uint64{sockMnt, 777})
	// Pod B holds the socket too: it must never be considered for A.
	fakeProc(t, root, 120, cg(uidB, ctrB), [2]uint64{sockMnt, 555})
	fakeProc(t, root, 130, "0::/system.slice/sshd.service\n", [2]uint64{sockMnt, 555})

	inf := &containerPods{fakeInformer: &fakeInformer{}}
	a, err := New(Config{Resolver: inf, Pods: inf, Containers: inf, ProcRoot: root, Registerer: prometheus.NewRegistry(), MinRescanInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a.sockMnt = sockMnt
	if err := a.pidx.refresh(context.Background(), root, time.Now(), true, 0); err != nil {
		t.Fatal(err)
	}
	cs := &connState{accepted: time.Now()}
	onlyA := map[string]types.UID{string(uidA): uidA}
	find := func(ino uint64) (holder, error) {
		cs.accepted = time.Now()
		return a.findHolder(context.Background(), cs, onlyA, ino)
	}

	if h, err := find(777); err != nil || h.pid != 110 || h.uid != uidA || h.ctrID != ctrA {
		t.Errorf("socket 777: %+v, %v; want process 110 in container %s", h, err, ctrA)
	}
	// Inode 555 is held by pod B, a host process, and by A's process on
	// another mount (not a socket): no holder in A.
	if h, err := find(555); err != nil || h.pid != 0 {
		t.Errorf("socket 555: %+v, %v; want no holder in pod A", h, err)
	}
	// A client process started after the listing.
	fakeProc(t, root, 140, cg(uidA, ctrA), [2]uint64{sockMnt, 888})
	if h, err := find(888); err != nil || h.pid != 140 {
		t.Errorf("socket 888 of a new process: %+v, %v; want process 140", h, err)
	}
	// A process holding more open files than a connection may read.
	files := make([][2]uint64, maxFDInfoReads+1)
	for i := range files {
		files[i] = [2]uint64{sockMnt, uint64(10_000 + i)}
	}
	fakeProc(t, root, 150, cg(uidA, ctrA), files...)
	if _, err := find(999); err == nil || !strings.Contains(err.Error(), "open files") {
		t.Errorf("past the budget: %v; want an error naming it", err)
	}
}
