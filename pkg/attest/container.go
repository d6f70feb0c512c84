package attest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/podresolve"
)

// Container mode: after the netns check has found the connection's socket
// (its inode, from the TCP table line), the process holding that socket
// is looked for among the pod's processes, and the container is named by
// that process's cgroup.
//
// Privilege: /proc/<pid>/fdinfo/<fd> (and the fdinfo directory listing)
// are readable only with ptrace read access to the process
// (PTRACE_MODE_READ_FSCREDS): the same UID as the process, or
// CAP_SYS_PTRACE. That one capability is all container mode adds. fdinfo is
// used rather than the /proc/<pid>/fd symlinks because listing the fd
// directory (mode 0500, owned by the process's UID) also needs
// CAP_DAC_READ_SEARCH, while fdinfo's "ino:" line (Linux 5.14 and later)
// names the same inode.

// ContainerPods is the informer's view container mode needs besides Pods;
// podresolve's Resolver (with Config.Containers) implements it.
type ContainerPods interface {
	// Container returns pod uid's running container with runtime ID id,
	// waiting briefly for a container that just started to show in the
	// pod's status.
	Container(ctx context.Context, uid types.UID, id string) (podresolve.Container, bool)
	// HostNetworkPods returns the node's live hostNetwork pods.
	HostNetworkPods() []podresolve.Pod
}

// Container results, the values of credbroker_attest_containers_total's
// result label.
const (
	CtrContainer        = "container"         // a container of the netns's pod holds the socket
	CtrHostNetwork      = "host_network"      // a container of a hostNetwork pod holds a host-namespace socket
	CtrNoHolder         = "no_holder"         // no process of the pod (or of any hostNetwork pod) holds it
	CtrUnknownContainer = "unknown_container" // the holder's container is not in the pod's status
	CtrUnavailable      = "unavailable"       // the fd tables could not be read
)

const (
	// maxFDInfoReads bounds the fdinfo files read for one connection:
	// a pod whose processes hold more open files than this is answered
	// "unavailable" rather than costing the agent unbounded work.
	maxFDInfoReads = 1 << 14
	// procRefreshInterval is the least time between two incremental
	// process listings (one of /proc, plus the cgroup of each new process):
	// a client process started a moment ago waits at most this long.
	procRefreshInterval = 50 * time.Millisecond
)

// errNoPtrace means the agent may not read other processes' fd tables.
var errNoPtrace = errors.New("no ptrace read access to the process (the agent needs CAP_SYS_PTRACE)")

// holder is the process found holding a socket.
type holder struct {
	pid   int32
	uid   types.UID
	ctrID string
}

// procIndex lists the node's processes with the pod UID each one's cgroup
// names, for container mode. A refresh re-reads the cgroup of new PIDs
// only; a full one re-reads every process (a PID reused since the last
// listing). Bounded by the node's processes.
type procIndex struct {
	mu       sync.Mutex // one refresh at a time; guards the fields
	procs    []seenProc // sorted by pid
	at, full time.Time  // when the last refresh and the last full one started
}

type seenProc struct {
	pid int32
	uid string // the pod UID the cgroup names; "" for none
}

// pidsOf returns the processes of the pods in uids, highest PID first (the
// newest process, most often the client, is looked at first).
func (x *procIndex) pidsOf(uids map[string]types.UID) []holder {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []holder
	for i := len(x.procs) - 1; i >= 0; i-- {
		if u, ok := uids[x.procs[i].uid]; ok && x.procs[i].uid != "" {
			out = append(out, holder{pid: x.procs[i].pid, uid: u})
		}
	}
	return out
}

// refresh lists /proc again unless a listing started after need; full
// re-reads every process's cgroup. It waits out procRefreshInterval (or,
// for a full one, minFull) since the last.
func (x *procIndex) refresh(ctx context.Context, root string, need time.Time, full bool, minFull time.Duration) error {
	gap := procRefreshInterval
	if full {
		gap = minFull
	}
	last := func() time.Time {
		if full {
			return x.full
		}
		return x.at
	}
	x.mu.Lock()
	prev := last()
	x.mu.Unlock()
	if prev.After(need) {
		return nil
	}
	// Waited out without the lock, so that a full listing waiting its turn
	// does not hold up incremental ones.
	if err := waitOut(ctx, gap-time.Since(prev)); err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if last().After(need) {
		return nil
	}
	start := time.Now()
	f, err := os.Open(root)
	if err != nil {
		return fmt.Errorf("listing %s: %w", root, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("listing %s: %w", root, err)
	}
	next := make([]seenProc, 0, len(names))
	buf := make([]byte, 4096)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 || pid > 1<<31-1 {
			continue
		}
		sp := seenProc{pid: int32(pid)}
		if i, ok := slices.BinarySearchFunc(x.procs, sp.pid, cmpPID); ok && !full {
			sp.uid = x.procs[i].uid
		} else if b, err := readFileInto(root+"/"+name+"/cgroup", buf); err == nil {
			sp.uid = podUIDFromCgroup(b)
		}
		next = append(next, sp)
	}
	slices.SortFunc(next, func(a, b seenProc) int { return int(a.pid) - int(b.pid) })
	x.procs, x.at = next, start
	if full {
		x.full = start
	}
	return nil
}

func cmpPID(s seenProc, pid int32) int { return int(s.pid) - int(pid) }

// forget drops pid from the index: its entry is stale (the process left
// its pod, or its PID was reused); the next refresh reads it afresh.
func (x *procIndex) forget(pid int32) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if i, ok := slices.BinarySearchFunc(x.procs, pid, cmpPID); ok {
		x.procs = slices.Delete(x.procs, i, i+1)
	}
}

// containerOf names the container holding the connection's socket (inode,
// from the netns check) among the processes of the pods in uids, and
// returns the pod (of those) and container. The result label is counted.
func (a *Attester) containerOf(ctx context.Context, cs *connState, uids map[string]types.UID, inode uint64) (types.UID, podresolve.Container, error) {
	h, err := a.findHolder(ctx, cs, uids, inode)
	if err != nil {
		a.m.containers.WithLabelValues(CtrUnavailable).Inc()
		return "", podresolve.Container{}, fmt.Errorf("finding the process holding socket %d: %w: %w", inode, ErrUnavailable, err)
	}
	if h.pid == 0 {
		a.m.containers.WithLabelValues(CtrNoHolder).Inc()
		return "", podresolve.Container{}, fmt.Errorf("no process of the pod holds socket %d (a process outside the pod in its network namespace?): %w", inode, ErrRefused)
	}
	c, ok := a.cpods.Container(ctx, h.uid, h.ctrID)
	if !ok {
		a.m.containers.WithLabelValues(CtrUnknownContainer).Inc()
		return "", podresolve.Container{}, fmt.Errorf("process %d of pod %s runs in container %s, which the pod's status does not list (yet): %w", h.pid, h.uid, h.ctrID, ErrRefused)
	}
	return h.uid, c, nil
}

// findHolder looks for the process holding socket inode among the
// processes of the pods in uids. A zero holder means none holds it, even
// after listing the node's processes again (a client started since the
// last listing) and once more in full (a reused PID).
func (a *Attester) findHolder(ctx context.Context, cs *connState, uids map[string]types.UID, inode uint64) (holder, error) {
	budget := maxFDInfoReads
	for attempt := 0; attempt < 3; attempt++ {
		switch attempt {
		case 1:
			if err := a.pidx.refresh(ctx, a.root, cs.accepted, false, a.minRescan); err != nil {
				return holder{}, err
			}
		case 2:
			if err := a.pidx.refresh(ctx, a.root, cs.accepted, true, a.minRescan); err != nil {
				return holder{}, err
			}
		}
		for _, h := range a.pidx.pidsOf(uids) {
			if h.pid == a.self {
				// The agent's own pod is a hostNetwork pod, and the
				// agent holds the server end of every connection: it is
				// never the client.
				continue
			}
			found, err := a.holds(&h, inode, &budget)
			switch {
			case errors.Is(err, errGone):
				a.pidx.forget(h.pid)
				continue
			case err != nil:
				return holder{}, err
			case found:
				return h, nil
			}
		}
	}
	return holder{}, nil
}

// holds reports whether process h.pid, still in pod h.uid, holds socket
// inode, and sets h.ctrID from its cgroup. Everything is read through one
// /proc/<pid> handle, so a reused PID cannot answer for the process.
func (a *Attester) holds(h *holder, inode uint64, budget *int) (bool, error) {
	d, err := openProc(a.root, int(h.pid))
	if err != nil {
		return false, err
	}
	defer d.close()
	var cg [4096]byte
	b, err := d.readSmall("cgroup", cg[:])
	if err != nil {
		return false, err
	}
	if podUIDFromCgroup(b) != string(h.uid) {
		return false, fmt.Errorf("process %d left pod %s: %w", h.pid, h.uid, errGone)
	}
	found, err := d.holdsSocket(a.sockMnt, inode, budget)
	if err != nil || !found {
		return false, err
	}
	h.ctrID = containerIDFromCgroup(b, string(h.uid))
	if h.ctrID == "" {
		return false, fmt.Errorf("process %d of pod %s holds the socket, but its cgroup names no container", h.pid, h.uid)
	}
	return true, nil
}

// holdsSocket reports whether the process has an open file on the socket
// filesystem's mount mnt with inode ino, from /proc/<pid>/fdinfo.
func (d procDir) holdsSocket(mnt int, ino uint64, budget *int) (bool, error) {
	fd, err := unix.Openat(d.fd, "fdinfo", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, classifyFD(d.pid, err)
	}
	dir := os.NewFile(uintptr(fd), "fdinfo")
	defer dir.Close()
	var buf [256]byte
	for {
		names, err := dir.Readdirnames(128)
		if len(names) == 0 {
			if err != nil && !errors.Is(err, io.EOF) {
				return false, classifyFD(d.pid, err)
			}
			return false, nil
		}
		for _, name := range names {
			if *budget <= 0 {
				return false, fmt.Errorf("the pod's processes hold more than %d open files", maxFDInfoReads)
			}
			*budget--
			f, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // closed meanwhile
				}
				return false, classifyFD(d.pid, err)
			}
			n, err := unix.Read(f, buf[:])
			unix.Close(f)
			if err != nil || n <= 0 {
				continue
			}
			m, i, ok := parseFDInfo(buf[:n])
			if ok && m == mnt && i == ino {
				return true, nil
			}
		}
	}
}

// classifyFD tells a process that went away from a refused read.
func classifyFD(pid int, err error) error {
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return fmt.Errorf("reading /proc/%d/fdinfo: %w: %w", pid, errNoPtrace, err)
	}
	return classifyOpen(fmt.Sprintf("reading /proc/%d/fdinfo", pid), err)
}

// parseFDInfo reads the mnt_id and ino lines of an fdinfo file
// ("pos:\t0\nflags:\t02\nmnt_id:\t10\nino:\t1508574\n...").
func parseFDInfo(b []byte) (mnt int, ino uint64, ok bool) {
	var haveMnt, haveIno bool
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, newline)
		k, v, found := bytes.Cut(line, []byte(":"))
		if !found {
			continue
		}
		v = bytes.TrimSpace(v)
		switch string(k) {
		case "mnt_id":
			n, err := strconv.Atoi(string(v))
			mnt, haveMnt = n, err == nil
		case "ino":
			n, err := strconv.ParseUint(string(v), 10, 64)
			ino, haveIno = n, err == nil
		}
		if haveMnt && haveIno {
			return mnt, ino, true
		}
	}
	return 0, 0, false
}

// containerIDFromCgroup returns the container ID that a /proc/<pid>/cgroup
// file names right below pod uid's cgroup, or "" when it names none (the
// pod's own cgroup, cri-o's conmon) or lines disagree. It understands
//
//	cgroupfs: .../pod<uid>/<id>                      (containerd, docker)
//	          .../pod<uid>/crio-<id>                 (cri-o)
//	systemd:  ...-pod<uid_>.slice/cri-containerd-<id>.scope
//	          ...-pod<uid_>.slice/crio-<id>.scope
//	          ...-pod<uid_>.slice/docker-<id>.scope
//
// on cgroup v1 (one line per hierarchy) and v2 ("0::/...") alike. IDs are
// 64 hexadecimal digits, as all three runtimes make them.
func containerIDFromCgroup(b []byte, uid string) string {
	var found string
	for path := range cgroupPaths(b) {
		segs := bytes.Split(path, slash)
		for k := 0; k+1 < len(segs); k++ {
			if podUIDFromSegment(segs[k]) != uid {
				continue
			}
			id := containerIDFromSegment(segs[k+1])
			if id != "" && !agree(&found, id) {
				return ""
			}
		}
	}
	return found
}

func containerIDFromSegment(seg []byte) string {
	s := string(seg)
	if t, ok := cutSuffix(s, ".scope"); ok {
		s = t
		switch {
		case hasPrefixCut(&s, "cri-containerd-"), hasPrefixCut(&s, "docker-"):
		case len(s) > len("crio-conmon-") && s[:len("crio-conmon-")] == "crio-conmon-":
			return ""
		case hasPrefixCut(&s, "crio-"):
		default:
			return ""
		}
	} else if len(s) > len("crio-conmon-") && s[:len("crio-conmon-")] == "crio-conmon-" {
		return ""
	} else {
		hasPrefixCut(&s, "crio-")
	}
	if len(s) != 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return ""
		}
	}
	return s
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

func hasPrefixCut(s *string, prefix string) bool {
	if len(*s) >= len(prefix) && (*s)[:len(prefix)] == prefix {
		*s = (*s)[len(prefix):]
		return true
	}
	return false
}

// sockfsMount returns the mount ID of the socket filesystem as fdinfo
// shows it, from a socket of the agent's own: every socket's fdinfo names
// the same kernel-internal mount. It fails on kernels whose fdinfo has no
// "ino:" line (before Linux 5.14).
func sockfsMount(root string) (int, error) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening a socket: %w", err)
	}
	defer unix.Close(s)
	var st unix.Stat_t
	if err := unix.Fstat(s, &st); err != nil {
		return 0, fmt.Errorf("stat of a socket: %w", err)
	}
	var buf [256]byte
	b, err := readFileInto(fmt.Sprintf("%s/self/fdinfo/%d", root, s), buf[:])
	if err != nil {
		return 0, fmt.Errorf("reading %s/self/fdinfo/%d: %w", root, s, err)
	}
	mnt, ino, ok := parseFDInfo(b)
	if !ok {
		return 0, fmt.Errorf("%s/self/fdinfo/%d has no mnt_id and ino lines (Linux 5.14 or later has them)", root, s)
	}
	if ino != st.Ino {
		return 0, fmt.Errorf("%s/self/fdinfo/%d names inode %d, the socket is %d: not this process's procfs", root, s, ino, st.Ino)
	}
	return mnt, nil
}

// capSysPtrace is CAP_SYS_PTRACE's bit (linux/capability.h).
const capSysPtrace = 19

// checkContainers is Check's part for container mode, after the scan: the
// socket filesystem's mount, CAP_SYS_PTRACE among the agent's effective
// capabilities, and ptrace read access to a pod's process in fact (an LSM
// such as AppArmor may refuse it still).
func (a *Attester) checkContainers() (string, bool) {
	mnt, err := sockfsMount(a.root)
	if err != nil {
		return fmt.Sprintf("--attest=container cannot name a socket's holder: %v", err), false
	}
	a.sockMnt = mnt
	var buf [4096]byte
	b, err := readFileInto(a.root+"/self/status", buf[:])
	if err != nil {
		return fmt.Sprintf("--attest=container cannot read %s/self/status: %v", a.root, err), false
	}
	eff, ok := statusHex(b, "CapEff:")
	if !ok {
		return fmt.Sprintf("--attest=container: %s/self/status has no CapEff line", a.root), false
	}
	if eff&(1<<capSysPtrace) == 0 {
		return fmt.Sprintf("--attest=container needs CAP_SYS_PTRACE, which the agent lacks (CapEff %016x): reading another user's /proc/<pid>/fdinfo, which names the sockets a process holds, takes ptrace read access; add SYS_PTRACE to the container's capabilities (deploy/daemonset/attest-container), or use --attest=netns", eff), false
	}
	a.mu.Lock()
	var pids []int32
	for _, p := range a.procs {
		if len(pids) < 3 && p.pid != a.self {
			pids = append(pids, p.pid)
		}
	}
	a.mu.Unlock()
	for _, pid := range pids {
		d, err := openProc(a.root, int(pid))
		if err != nil {
			continue
		}
		budget := 1
		_, err = d.holdsSocket(mnt, 0, &budget)
		d.close()
		if errors.Is(err, errNoPtrace) {
			return fmt.Sprintf("--attest=container: the agent has CAP_SYS_PTRACE but was refused ptrace read access to process %d of a pod (%v): a security module (AppArmor, SELinux) confines the agent", pid, err), false
		}
	}
	return "", true
}

// statusHex reads a hexadecimal field of /proc/<pid>/status.
func statusHex(b []byte, key string) (uint64, bool) {
	i := bytes.Index(b, []byte("\n"+key))
	if i < 0 {
		return 0, false
	}
	line := b[i+1+len(key):]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	v, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 64)
	return v, err == nil
}

// hostNetworkCaller attests a connection from one of the node's own
// addresses (err is the informer's ErrHostAddress): if a process of a
// hostNetwork pod holds it, that pod is the caller; otherwise err stands.
func (a *Attester) hostNetworkCaller(ctx context.Context, cs *connState, hostErr error) (podresolve.Pod, error) {
	start := time.Now()
	defer func() { a.m.duration.Observe(time.Since(start).Seconds()) }()
	pods := a.cpods.HostNetworkPods()
	if len(pods) == 0 {
		return podresolve.Pod{}, hostErr
	}
	uids := make(map[string]types.UID, len(pods))
	for _, p := range pods {
		uids[string(p.UID)] = p.UID
	}
	// Every hostNetwork pod is in the host's network namespace: the first
	// with a known process shows its TCP table.
	var ev evidence
	var found bool
	var table types.UID // the pod whose table showed the socket
	for _, p := range pods {
		var err error
		ev, found, err = a.search(ctx, cs, p.UID)
		if err != nil {
			return a.unavailable(ctx, cs, podresolve.Pod{}, err)
		}
		if found || a.proc(p.UID) != nil {
			table = p.UID
			break
		}
	}
	if !found {
		return podresolve.Pod{}, hostErr
	}
	uid, c, err := a.containerOf(ctx, cs, uids, ev.inode)
	switch {
	case errors.Is(err, ErrUnavailable):
		return a.unavailable(ctx, cs, podresolve.Pod{}, err)
	case err != nil:
		// A process of the host that is no hostNetwork pod's: refused as
		// before container mode.
		a.log.LogAttrs(ctx, slog.LevelDebug, "host-network connection held by no hostNetwork pod's container",
			slog.String(a.addrKey, cs.client.Addr().String()), slog.Int("client_port", int(cs.client.Port())), slog.String("error", err.Error()))
		return podresolve.Pod{}, hostErr
	}
	pod, ok := a.pods.PodByUID(uid)
	if !ok {
		return podresolve.Pod{}, hostErr
	}
	if err := a.remember(table, ev); err != nil {
		return a.refuse(ctx, cs, podresolve.Pod{}, err)
	}
	pod.Container = &c
	a.m.containers.WithLabelValues(CtrHostNetwork).Inc()
	return a.accept(ctx, cs, pod, pod, ev), nil
}
