package attest

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
)

// errGone means the process went away (or its /proc directory was never
// there): the cache entry is stale, not the kernel unreadable.
var errGone = errors.New("process gone")

// podUIDFromCgroup returns the pod UID that a /proc/<pid>/cgroup file names,
// or "" when it names none (a host process) or more than one (never written
// by a kubelet; not trusted). It understands
//
//	cgroupfs driver: .../kubepods/besteffort/pod<uid>/<container>
//	systemd driver:  .../kubepods-besteffort-pod<uid with _ for ->.slice/cri-containerd-<id>.scope
//
// on every line, so cgroup v1 (one line per hierarchy), v2 ("0::/...") and
// hybrid layouts all work, as do paths relative to a cgroup namespace
// ("/../../kubepods...").
func podUIDFromCgroup(b []byte) string {
	var found string
	for path := range cgroupPaths(b) {
		for len(path) > 0 {
			var seg []byte
			seg, path, _ = bytes.Cut(path, slash)
			uid := podUIDFromSegment(seg)
			if uid != "" && !agree(&found, uid) {
				return ""
			}
		}
	}
	return found
}

// Separators the parsers below cut lines at.
var (
	newline = []byte{'\n'}
	colon   = []byte{':'}
	slash   = []byte{'/'}
)

// cgroupPaths yields the path of each line of a /proc/<pid>/cgroup file
// (hierarchy-ID:controller-list:cgroup-path), skipping lines without one.
func cgroupPaths(b []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for rest := b; len(rest) > 0; {
			var line []byte
			line, rest, _ = bytes.Cut(rest, newline)
			_, fields, ok := bytes.Cut(line, colon)
			if !ok {
				continue
			}
			if _, path, ok := bytes.Cut(fields, colon); ok && !yield(path) {
				return
			}
		}
	}
}

// agree records v as what the lines of a file name, and reports false
// when an earlier line named something else: two answers are none.
func agree(found *string, v string) bool {
	if *found == "" {
		*found = v
	}
	return *found == v
}

// podUIDFromSegment returns the UID a single cgroup path segment names.
func podUIDFromSegment(seg []byte) string {
	var raw []byte
	switch {
	case bytes.HasSuffix(seg, []byte(".slice")):
		i := bytes.LastIndex(seg, []byte("-pod"))
		if i < 0 {
			return ""
		}
		raw = seg[i+len("-pod") : len(seg)-len(".slice")]
	case bytes.HasPrefix(seg, []byte("pod")):
		raw = seg[len("pod"):]
	default:
		return ""
	}
	// A UUID (36) or, for static pods, the config hash (32 hex digits).
	if len(raw) != 36 && len(raw) != 32 {
		return ""
	}
	out := make([]byte, len(raw))
	for i, c := range raw {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F', c == '-':
			out[i] = c
		case c == '_':
			out[i] = '-'
		default:
			return ""
		}
	}
	return string(out)
}

// procDir is an open /proc/<pid> directory. Files opened through it belong
// to that very process even if it exits and its PID is reused: the kernel
// then fails the open instead of answering for the new process.
type procDir struct {
	fd  int
	pid int
}

func openProc(root string, pid int) (procDir, error) {
	fd, err := unix.Open(root+"/"+strconv.Itoa(pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return procDir{fd: -1}, classifyOpen(fmt.Sprintf("opening %s/%d", root, pid), err)
	}
	return procDir{fd: fd, pid: pid}, nil
}

func (d procDir) close() {
	if d.fd >= 0 {
		_ = unix.Close(d.fd)
	}
}

// classifyOpen tells a vanished process (errGone) from an unreadable
// kernel.
func classifyOpen(what string, err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%s: %w: %w", what, errGone, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// open opens a file below the directory for reading.
func (d procDir) open(name string) (int, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, classifyOpen(fmt.Sprintf("opening /proc/%d/%s", d.pid, name), err)
	}
	return fd, nil
}

// read is unix.Read, again when a signal interrupted it.
func read(fd int, buf []byte) (int, error) {
	for {
		k, err := unix.Read(fd, buf)
		if err != unix.EINTR {
			return k, err
		}
	}
}

// readFull reads fd into buf until the end of the file or of buf.
func readFull(fd int, buf []byte) ([]byte, error) {
	n := 0
	for n < len(buf) {
		k, err := read(fd, buf[n:])
		if err != nil {
			return nil, err
		}
		if k == 0 {
			break
		}
		n += k
	}
	return buf[:n], nil
}

// readSmall reads a small file below the directory into buf.
func (d procDir) readSmall(name string, buf []byte) ([]byte, error) {
	fd, err := d.open(name)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	b, err := readFull(fd, buf)
	if err != nil {
		return nil, classifyOpen(fmt.Sprintf("reading /proc/%d/%s", d.pid, name), err)
	}
	return b, nil
}

// netnsInode returns the inode of the process's network namespace, or 0
// when it cannot be read (it needs ptrace access, which an agent without
// capabilities lacks for other users' processes).
func (d procDir) netnsInode() uint64 {
	var buf [64]byte
	n, err := unix.Readlinkat(d.fd, "ns/net", buf[:])
	if err != nil {
		return 0
	}
	s := string(buf[:n]) // net:[4026531840]
	s = strings.TrimSuffix(strings.TrimPrefix(s, "net:["), "]")
	ino, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return ino
}

// scanProc lists the processes under root and returns, for every pod UID
// that want accepts, the lowest PID in that pod's cgroup: usually the
// sandbox's pause process, the one least likely to leave the pod's
// network namespace.
func scanProc(root string, want func(string) (types.UID, bool)) (map[types.UID]int32, int, error) {
	f, err := os.Open(root)
	if err != nil {
		return nil, 0, fmt.Errorf("listing %s: %w", root, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, 0, fmt.Errorf("listing %s: %w", root, err)
	}
	found := make(map[types.UID]int32)
	buf := make([]byte, 4096)
	procs := 0
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		procs++
		b, err := readFileInto(root+"/"+name+"/cgroup", buf)
		if err != nil {
			continue // exited meanwhile, or a kernel thread
		}
		raw := podUIDFromCgroup(b)
		if raw == "" {
			continue
		}
		uid, ok := want(raw)
		if !ok {
			continue
		}
		if old, ok := found[uid]; !ok || int32(pid) < old {
			found[uid] = int32(pid)
		}
	}
	return found, procs, nil
}

func readFileInto(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readFull(fd, buf)
}

// TCP states as /proc/net/tcp prints them (include/net/tcp_states.h).
const (
	tcpEstablished = 0x01
	tcpFinWait1    = 0x04
	tcpFinWait2    = 0x05
)

// clientStateOK reports whether a client socket in state st can be the
// peer of a connection whose server end is open. CLOSE_WAIT, LAST_ACK,
// CLOSING and TIME_WAIT mean the server end sent its FIN, so such a socket
// belongs to an earlier connection on the same 4-tuple, possibly one whose
// agent end was reset by a forger: never evidence for this connection.
// FIN_WAIT1/2 are a client that half-closed after sending its request
// (shutdown(SHUT_WR)), which HTTP/1 allows.
func clientStateOK(st uint8) bool {
	return st == tcpEstablished || st == tcpFinWait1 || st == tcpFinWait2
}

// tableName returns the /proc/<pid>/net file holding connections of the
// family the needle is written in.
func tableName(v6 bool) string {
	if v6 {
		return "net/tcp6"
	}
	return "net/tcp"
}

// hexAddr writes an address as /proc/net/tcp{,6} does: each 32-bit word of
// the network-order address printed as a native-endian integer, %08X.
func hexAddr(dst []byte, a netip.Addr) []byte {
	b := a.AsSlice()
	for i := 0; i+4 <= len(b); i += 4 {
		dst = fmt.Appendf(dst, "%08X", binary.NativeEndian.Uint32(b[i:i+4]))
	}
	return dst
}

// needle is how one connection's line begins after the slot number, as
// seen from the client's side: "LOCAL:PORT REMOTE:PORT ".
func needle(client, server netip.AddrPort, v6 bool) []byte {
	c, s := client.Addr(), server.Addr()
	if v6 {
		if c.Is4() {
			c, s = netip.AddrFrom16(c.As16()), netip.AddrFrom16(s.As16())
		}
	}
	var b []byte
	b = hexAddr(b, c)
	b = fmt.Appendf(b, ":%04X ", client.Port())
	b = hexAddr(b, s)
	b = fmt.Appendf(b, ":%04X ", server.Port())
	return b
}

// serverField is the remote-address column every line of interest holds
// (the agent's endpoint), used to keep only those lines from a table.
func serverField(server netip.AddrPort, v6 bool) []byte {
	s := server.Addr()
	if v6 && s.Is4() {
		s = netip.AddrFrom16(s.As16())
	}
	b := []byte{' '}
	b = hexAddr(b, s)
	return fmt.Appendf(b, ":%04X ", server.Port())
}

// socketLine is what a TCP table line says about one socket.
type socketLine struct {
	state uint8
	inode uint64
}

// findSocket looks for the connection's line in lines (whole lines of a
// TCP table) and returns the first in a state clientStateOK accepts.
func findSocket(lines, ndl []byte) (socketLine, bool) {
	for off := 0; ; {
		i := bytes.Index(lines[off:], ndl)
		if i < 0 {
			return socketLine{}, false
		}
		start := off + i
		off = start + len(ndl)
		// The needle must be the line's address columns, right after
		// "  sl: ".
		if start < 2 || lines[start-1] != ' ' || lines[start-2] != ':' {
			continue
		}
		end := bytes.IndexByte(lines[off:], '\n')
		rest := lines[off:]
		if end >= 0 {
			rest = rest[:end]
		}
		// st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
		f := bytes.Fields(rest)
		if len(f) < 7 {
			continue
		}
		st, err := strconv.ParseUint(string(f[0]), 16, 8)
		if err != nil || !clientStateOK(uint8(st)) {
			continue
		}
		ino, _ := strconv.ParseUint(string(f[6]), 10, 64)
		return socketLine{state: uint8(st), inode: ino}, true
	}
}

// maxTableKeep bounds the lines kept from one TCP table read (those whose
// remote end is the agent's endpoint): about 7,000 connections from one
// pod to the agent, far beyond the per-address connection limit.
const maxTableKeep = 1 << 20

// readTable reads the process's TCP table and keeps the lines whose remote
// end is server, so that one read answers every connection accepted
// before it started.
func (d procDir) readTable(v6 bool, server []byte, buf []byte) ([]byte, error) {
	name := tableName(v6)
	fd, err := d.open(name)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var keep []byte
	n := 0 // bytes of buf holding an incomplete line
	for {
		k, err := read(fd, buf[n:])
		if err != nil {
			return nil, classifyOpen(fmt.Sprintf("reading /proc/%d/%s", d.pid, name), err)
		}
		if k == 0 {
			return keep, nil
		}
		n += k
		last := bytes.LastIndexByte(buf[:n], '\n')
		if last < 0 {
			if n == len(buf) {
				return nil, fmt.Errorf("reading /proc/%d/%s: a line longer than %d bytes", d.pid, name, len(buf))
			}
			continue
		}
		chunk := buf[:last+1]
		for len(chunk) > 0 {
			i := bytes.Index(chunk, server)
			if i < 0 {
				break
			}
			ls := bytes.LastIndexByte(chunk[:i], '\n') + 1
			le := i + bytes.IndexByte(chunk[i:], '\n') + 1
			keep = append(keep, chunk[ls:le]...)
			if len(keep) > maxTableKeep {
				return nil, fmt.Errorf("reading /proc/%d/%s: more than %d bytes of connections to the agent", d.pid, name, maxTableKeep)
			}
			chunk = chunk[le:]
		}
		n = copy(buf, buf[last+1:n])
	}
}

// hasLocalAddr reports whether the process's network namespace has a as a
// local address (IPv4: a "/32 host LOCAL" leaf of fib_trie; IPv6: a line
// of if_inet6). These files cover one namespace only and cost microseconds
// where a TCP table read walks the whole host's connection hash.
func (d procDir) hasLocalAddr(a netip.Addr, buf []byte) (bool, error) {
	if a.Is6() {
		b, err := d.readSmall("net/if_inet6", buf)
		if err != nil {
			return false, err
		}
		raw := a.As16()
		return bytes.Contains(b, []byte(hex.EncodeToString(raw[:])+" ")), nil
	}
	b, err := d.readSmall("net/fib_trie", buf)
	if err != nil {
		return false, err
	}
	if len(b) == len(buf) {
		// Truncated: do not conclude "absent" from part of the file.
		return true, nil
	}
	leaf := []byte("|-- " + a.String() + "\n")
	for off := 0; ; {
		i := bytes.Index(b[off:], leaf)
		if i < 0 {
			return false, nil
		}
		off += i + len(leaf)
		// The leaf's entries follow, one per line, until the next node.
		for rest := b[off:]; len(rest) > 0; {
			line := rest
			if j := bytes.IndexByte(rest, '\n'); j >= 0 {
				line, rest = rest[:j], rest[j+1:]
			} else {
				rest = nil
			}
			if bytes.Contains(line, []byte("--")) {
				break
			}
			if bytes.Contains(line, []byte("/32 host LOCAL")) {
				return true, nil
			}
		}
	}
}
