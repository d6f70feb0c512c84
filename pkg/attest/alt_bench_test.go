package attest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The alternative measured against /proc/<pid>/net/tcp: netlink SOCK_DIAG
// in the pod's network namespace, asking for the one connection by its
// 4-tuple (a hash lookup in the kernel, where a /proc table read walks the
// host's whole established hash). Getting a netlink socket in another
// namespace needs setns(2): CAP_SYS_ADMIN, and CAP_SYS_PTRACE to open
// another user's /proc/<pid>/ns/net. Not used by the agent; measured here.

const sockDiagByFamily = 20

// diagSocketIn opens a NETLINK_SOCK_DIAG socket in pid's network
// namespace; the socket stays bound to it after the thread returns.
func diagSocketIn(pid int) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{-1, err}
			return
		}
		defer orig.Close()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{-1, err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, err}
			return
		}
		fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, err} // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, serr}
	}()
	r := <-ch
	return r.fd, r.err
}

// diagLookup asks for the TCP socket client -> server (IPv4) and returns
// its state and inode; found is false on ENOENT.
func diagLookup(fd int, client, server netip.AddrPort) (state uint8, inode uint32, found bool, err error) {
	req := make([]byte, 16+56)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	r := req[16:]
	r[0], r[1] = unix.AF_INET, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(r[4:], ^uint32(0)) // all states
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], client.Port())
	binary.BigEndian.PutUint16(id[2:], server.Port())
	c4, s4 := client.Addr().As4(), server.Addr().As4()
	copy(id[4:], c4[:])
	copy(id[20:], s4[:])
	binary.NativeEndian.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	binary.NativeEndian.PutUint32(id[44:], ^uint32(0))
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, false, err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, 0, false, err
	}
	if n < 16 {
		return 0, 0, false, fmt.Errorf("short netlink answer")
	}
	switch binary.NativeEndian.Uint16(buf[4:]) {
	case unix.NLMSG_ERROR:
		if errno := int32(binary.NativeEndian.Uint32(buf[16:])); errno != 0 {
			if unix.Errno(-errno) == unix.ENOENT {
				return 0, 0, false, nil
			}
			return 0, 0, false, unix.Errno(-errno)
		}
		return 0, 0, false, nil
	case sockDiagByFamily:
		m := buf[16:n]
		return m[1], binary.NativeEndian.Uint32(m[68:]), true, nil
	}
	return 0, 0, false, fmt.Errorf("unexpected netlink message type %d", binary.NativeEndian.Uint16(buf[4:]))
}

func addrs(c net.Conn) (client, server netip.AddrPort) {
	ra, la := c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port()), netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
}

// BenchmarkAltSockDiagSetns: per connection, setns into the pod's
// namespace for a new SOCK_DIAG socket, then one exact lookup.
func BenchmarkAltSockDiagSetns(b *testing.B) {
	l, _, ns, a := benchNode(b)
	pid := int(a.procs[a.pods.LivePods()[0].UID].pid)
	conns := l.dialMany(ns, b.N)
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		fd, err := diagSocketIn(pid)
		if err != nil {
			b.Fatal(err)
		}
		c, s := addrs(conns[i])
		st, _, found, err := diagLookup(fd, c, s)
		unix.Close(fd)
		if err != nil || !found || st != tcpEstablished {
			b.Fatal(st, found, err)
		}
		d = append(d, time.Since(t0))
	}
	b.StopTimer()
	reportQuantiles(b, d)
}

// BenchmarkAltSockDiagCached: one SOCK_DIAG socket per pod kept open (one
// file descriptor per pod), one exact lookup per connection.
func BenchmarkAltSockDiagCached(b *testing.B) {
	l, _, ns, a := benchNode(b)
	pid := int(a.procs[a.pods.LivePods()[0].UID].pid)
	fd, err := diagSocketIn(pid)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	conns := l.dialMany(ns, b.N)
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		c, s := addrs(conns[i])
		st, _, found, err := diagLookup(fd, c, s)
		if err != nil || !found || st != tcpEstablished {
			b.Fatal(st, found, err)
		}
		d = append(d, time.Since(t0))
	}
	b.StopTimer()
	reportQuantiles(b, d)
}

// TestSockDiagAgrees: the alternative finds what the /proc table shows.
func TestSockDiagAgrees(t *testing.T) {
	l := newLab(t)
	inf, _, ns, pid := l.onePod("a")
	a, _ := newAttester(t, inf)
	_, conn := l.dial(ns, srv4)
	if _, err := a.Resolve(WithConn(context.Background(), conn), ipA); err != nil {
		t.Fatal(err)
	}
	fd, err := diagSocketIn(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, s := addrs(conn)
	st, _, found, err := diagLookup(fd, c, s)
	if err != nil || !found || st != tcpEstablished {
		t.Fatalf("SOCK_DIAG: state %d found %v err %v", st, found, err)
	}
	_, _, found, err = diagLookup(fd, netip.AddrPortFrom(ipB, 1), s)
	if err != nil || found {
		t.Fatalf("SOCK_DIAG for an absent connection: found %v err %v", found, err)
	}
}
