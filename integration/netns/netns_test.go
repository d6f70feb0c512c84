//go:build integration && linux

package netns_test

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/testenv"
)

// prefix keeps this test's namespaces apart from the other suites' ones.
const prefix = "cbnt"

func setup(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ctx := context.Background()
	if err := netns.Cleanup(ctx, prefix); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Cleanup(context.Background(), prefix); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatalf("AddHostAddr: %v", err)
	}
	// Twice: it must be idempotent.
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatalf("AddHostAddr again: %v", err)
	}
}

// create makes a namespace for the test, closed at its end.
func create(t *testing.T, spec netns.Spec) *netns.Namespace {
	t.Helper()
	ns, err := netns.Create(context.Background(), spec)
	if err != nil {
		t.Fatalf("Create(%s): %v", spec.Name, err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// acceptRemote serves l and reports each accepted connection's remote address.
func acceptRemote(t *testing.T, l net.Listener) <-chan netip.Addr {
	t.Helper()
	ch := make(chan netip.Addr, 1024)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ch <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}
	}()
	return ch
}

func TestSourceAddressIsThePods(t *testing.T) {
	setup(t)
	ctx := context.Background()
	pods := []netns.Spec{
		{Name: prefix + "-a", IP: netip.MustParseAddr("10.244.250.1"), IPv6: netip.MustParseAddr("fd00:244::fa01")},
		{Name: prefix + "-b", IP: netip.MustParseAddr("10.244.250.2")},
	}
	var nss []*netns.Namespace
	for _, s := range pods {
		ns, err := netns.Create(ctx, s)
		if err != nil {
			t.Fatalf("Create(%s): %v", s.Name, err)
		}
		nss = append(nss, ns)
	}

	l, err := net.Listen("tcp", netip.AddrPortFrom(netns.ServiceAddr4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := acceptRemote(t, l)

	for _, ns := range nss {
		c, err := ns.DialContext(ctx, "tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("DialContext from %s: %v", ns.Name(), err)
		}
		if src := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); src != ns.IP() {
			t.Errorf("%s: local address %v, want %v", ns.Name(), src, ns.IP())
		}
		c.Close()
		if r := <-got; r != ns.IP() {
			t.Errorf("%s: server saw %v, want %v", ns.Name(), r, ns.IP())
		}
	}

	// The same through a process started with Exec.
	out, err := nss[1].Exec(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("Exec: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "10.244.250.2/32") {
		t.Errorf("eth0 inside %s: %s; want 10.244.250.2/32", nss[1].Name(), out)
	}

	// IPv6 to an address on the host's lo.
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr6); err != nil {
		t.Fatalf("AddHostAddr v6: %v", err)
	}
	t.Cleanup(func() { _ = netns.RemoveHostAddr(context.Background(), netns.ServiceAddr6) })
	l6, err := net.Listen("tcp", netip.AddrPortFrom(netns.ServiceAddr6, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l6.Close()
	got6 := acceptRemote(t, l6)
	c, err := nss[0].DialContext(ctx, "tcp", l6.Addr().String())
	if err != nil {
		t.Fatalf("DialContext v6: %v", err)
	}
	c.Close()
	if r := <-got6; r != nss[0].IPv6() {
		t.Errorf("v6: server saw %v, want %v", r, nss[0].IPv6())
	}
}

// TestThreadsComeBack checks that dialing from namespaces leaves no OS thread
// behind in a pod's namespace: a host-only dial (to 127.0.0.1, which inside a
// namespace is the namespace's own loopback with no listener) afterwards must
// always reach the host listener.
func TestThreadsComeBack(t *testing.T) {
	setup(t)
	ctx := context.Background()
	ns := create(t, netns.Spec{Name: prefix + "-t", IP: netip.MustParseAddr("10.244.250.3")})
	l, err := net.Listen("tcp", netip.AddrPortFrom(netns.ServiceAddr4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	hostL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	podSeen := acceptRemote(t, l)
	hostSeen := acceptRemote(t, hostL)

	const n = 200
	errs := make(chan error, 2*n)
	// dialAll makes n dials at once and waits for them all.
	dialAll := func(dial func() (net.Conn, error)) {
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				c, err := dial()
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			})
		}
		wg.Wait()
	}
	dialAll(func() (net.Conn, error) { return ns.DialContext(ctx, "tcp", l.Addr().String()) })
	dialAll(func() (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", hostL.Addr().String())
	})
	close(errs)
	for err := range errs {
		t.Errorf("dial: %v", err)
	}
	for range n {
		if a := <-podSeen; a != ns.IP() {
			t.Fatalf("pod dial seen from %v", a)
		}
		if a := <-hostSeen; a != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("host dial seen from %v", a)
		}
	}
}

// TestListenAndDialFrom: a listener opened through the namespace is the
// pod's (it binds the pod's address, which the host does not hold, and the
// host reaches it through the veth), and DialFrom binds its local address
// inside the namespace (the pod's address works, the host's does not).
func TestListenAndDialFrom(t *testing.T) {
	setup(t)
	ctx := context.Background()
	ns := create(t, netns.Spec{Name: prefix + "-l", IP: netip.MustParseAddr("10.244.250.4")})
	addr := netip.AddrPortFrom(ns.IP(), 0).String()
	if l, err := net.Listen("tcp", addr); err == nil {
		l.Close()
		t.Fatalf("the host holds %s: the test cannot tell inside from outside", ns.IP())
	}
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("Listen inside: %v", err)
	}
	defer l.Close()
	seen := acceptRemote(t, l)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dialing the pod's listener from the host: %v", err)
	}
	c.Close()
	if a := <-seen; a == ns.IP() {
		t.Errorf("the pod's listener saw the host's dial come from the pod's own address %v", a)
	}

	hostL, err := net.Listen("tcp", netip.AddrPortFrom(netns.ServiceAddr4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	hostSeen := acceptRemote(t, hostL)
	h, err := netns.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err = h.DialFrom(ns.IP())(ctx, "tcp", hostL.Addr().String())
	if err != nil {
		t.Fatalf("DialFrom the pod's address: %v", err)
	}
	c.Close()
	if a := <-hostSeen; a != ns.IP() {
		t.Errorf("DialFrom %v seen from %v", ns.IP(), a)
	}
	if c, err := h.DialFrom(netns.ServiceAddr4)(ctx, "tcp", hostL.Addr().String()); err == nil {
		c.Close()
		t.Errorf("DialFrom the host's %v worked: the bind is not inside the namespace", netns.ServiceAddr4)
	}
}

// TestCleanupRemovesLeftovers simulates a crashed run: a namespace that was
// never closed is removed by Cleanup, Create replaces a leftover of the same
// name, and Close stays idempotent.
func TestCleanupRemovesLeftovers(t *testing.T) {
	setup(t)
	ctx := context.Background()
	spec := netns.Spec{Name: prefix + "-c", IP: netip.MustParseAddr("10.244.250.4")}
	if _, err := netns.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// Same name again without closing the first: replaces it.
	ns, err := netns.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create over a leftover: %v", err)
	}
	if err := netns.Cleanup(ctx, prefix); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if _, err := net.InterfaceByName(ns.HostLink()); err == nil {
		t.Errorf("host link %s still exists after Cleanup", ns.HostLink())
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), spec.Name) {
		t.Errorf("namespace %s still listed after Cleanup: %s", spec.Name, out)
	}
	if err := ns.Close(); err != nil {
		t.Errorf("Close after Cleanup: %v", err)
	}
	if err := ns.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := ns.DialContext(ctx, "tcp", "169.254.170.23:80"); err == nil {
		t.Errorf("DialContext on a closed namespace succeeded")
	}
}

func TestCreateRejectsBadSpecs(t *testing.T) {
	testenv.RequireRoot(t)
	for _, s := range []netns.Spec{
		{Name: "UPPER", IP: netip.MustParseAddr("10.244.250.9")},
		{Name: "much-too-long-name", IP: netip.MustParseAddr("10.244.250.9")},
		{Name: prefix + "-x"},
		{Name: prefix + "-x", IP: netip.MustParseAddr("fd00::1")},
	} {
		if ns, err := netns.Create(context.Background(), s); err == nil {
			ns.Close()
			t.Errorf("Create(%+v) succeeded", s)
		}
	}
}
