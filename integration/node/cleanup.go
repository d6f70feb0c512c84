//go:build integration

package node

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupHierarchies lists the mounted cgroup v1 hierarchies (and the v2
// mount, if that is what the machine has).
func cgroupHierarchies() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// mount point is field 5; the filesystem type follows the " - ".
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				out = append(out, fields[4])
			}
		}
	}
	return out
}

// makeCgroupRoot creates /credbroker-node in every hierarchy: the kubelet
// refuses a cgroupRoot that does not exist. A new cpuset cgroup starts with
// no CPUs or memory nodes, so it gets its parent's.
func makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, cgroupRoot)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				cur, _ := os.ReadFile(filepath.Join(d, f))
				if len(bytes.TrimSpace(cur)) == 0 {
					if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// cgroupPIDs lists every process in the node's cgroup tree.
func cgroupPIDs() []int {
	var pids []int
	for _, h := range cgroupHierarchies() {
		_ = filepath.WalkDir(filepath.Join(h, cgroupRoot), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, l := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(l); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// processes lists, in /proc's order, the processes whose /proc/<pid>
// directory keep accepts. A process that exits meanwhile is keep's to pass
// over (its files no longer read).
func processes(keep func(proc string) bool) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && keep(filepath.Join("/proc", e.Name())) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroupRoot removes the node's cgroup tree, deepest first.
func removeCgroupRoot() {
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, cgroupRoot), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			_ = syscall.Rmdir(d)
		}
	}
}

// teardown kills every container process of the node (by its cgroup tree,
// which holds all of them and nothing else), then the containerd shims of
// this node's containerd (by their -address argument), removes the pod
// network namespaces containerd made (those not in seen; nil means none are
// known, so none are removed) and the kubelet's /var/log/containers links.
func teardown(ctx context.Context, dir string, seen map[string]bool) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := cgroupPIDs()
		if len(pids) == 0 || time.Now().After(deadline) {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	sock := filepath.Join(dir, "containerd.sock")
	shims := processes(func(proc string) bool {
		b, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		if err != nil {
			return false
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.Contains(args[0], "containerd-shim") {
			return false
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-address" && args[i+1] == sock {
				return true
			}
		}
		return false
	})
	for _, pid := range shims {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if seen != nil {
		es, _ := os.ReadDir("/var/run/netns")
		for _, e := range es {
			if strings.HasPrefix(e.Name(), "cni-") && !seen[e.Name()] {
				p := filepath.Join("/var/run/netns", e.Name())
				_ = unix.Unmount(p, unix.MNT_DETACH)
				_ = os.Remove(p)
			}
		}
	}
	links, _ := os.ReadDir("/var/log/containers")
	for _, l := range links {
		p := filepath.Join("/var/log/containers", l.Name())
		if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, dir+"/") {
			_ = os.Remove(p)
		}
	}
}

// unmountUnder detaches every mount below dir, deepest first (overlay
// rootfs, shm, the kubelet's volume tmpfs).
func unmountUnder(dir string) {
	if dir == "" {
		return
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	for _, mp := range mps {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
}
