package linklocal

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/credbroker/agent/internal/testfake"
)

// requireRoot skips a test that needs CAP_NET_ADMIN and CAP_SYS_ADMIN (to
// create network namespaces), except under CI, where a skip would hide that
// the test never ran.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	testfake.Unavailable(t, "root, to create network namespaces (CI runs as root)")
}

// inNetns runs fn on an OS thread moved into a fresh network namespace. The
// thread stays locked and dies with the goroutine, so the namespace change
// never leaks into other goroutines. fn must report failures with t.Error,
// not t.Fatal (it does not run on the test goroutine).
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	requireRoot(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in the new namespace.
		ns, err := netns.New()
		if err != nil {
			t.Errorf("creating network namespace: %v", err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

func addrsOn(t *testing.T, name string, family int) []netip.Prefix {
	t.Helper()
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Errorf("looking up %s: %v", name, err)
		return nil
	}
	addrs, err := netlink.AddrList(link, family)
	if err != nil {
		t.Errorf("listing addresses on %s: %v", name, err)
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		out = append(out, prefixOf(a.IPNet))
	}
	return out
}

func linkExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return false
	}
	if err != nil {
		t.Errorf("looking up %s: %v", name, err)
	}
	return err == nil
}

// kindSupported reports whether the kernel in the current namespace can
// create links of kind, by trying.
func kindSupported(t *testing.T, kind string) bool {
	t.Helper()
	const probe = "llprobe0"
	err := netlink.LinkAdd(&netlink.GenericLink{LinkAttrs: netlink.LinkAttrs{Name: probe}, LinkType: kind})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return false
	}
	if err != nil {
		t.Errorf("probing link kind %s: %v", kind, err)
		return false
	}
	if l, err := netlink.LinkByName(probe); err == nil {
		_ = netlink.LinkDel(l)
	}
	return true
}

// reachable reports whether a TCP listener on addr accepts a connection
// dialled in the same namespace.
func reachable(t *testing.T, addr netip.Addr) bool {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Errorf("listening on %s: %v", addr, err)
		return false
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Errorf("dialling %s: %v", ln.Addr(), err)
		return false
	}
	c.Close()
	return true
}

func withKind(t *testing.T, kind string) {
	t.Helper()
	old := dedicatedKind
	dedicatedKind = kind
	t.Cleanup(func() { dedicatedKind = old })
}

// setupTwice runs Setup twice with the default Config, as a restarted
// agent does; ok is false, the test failed, if either run failed. It runs
// in the caller's goroutine, which inNetns has put in the test namespace.
func setupTwice(t *testing.T) (first, second Result, ok bool) {
	t.Helper()
	ctx := context.Background()
	first, err := Setup(ctx, Config{})
	if err != nil {
		t.Errorf("first Setup: %v", err)
		return first, second, false
	}
	if second, err = Setup(ctx, Config{}); err != nil {
		t.Errorf("second Setup: %v", err)
		return first, second, false
	}
	return first, second, true
}

// onLoopback is a prepare step that puts p on lo, as a node's own
// address.
func onLoopback(p netip.Prefix) func() error {
	return func() error {
		lo, err := netlink.LinkByName(LoopbackLink)
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD})
	}
}

func TestSetupFallsBackToLoopbackWhenKindMissing(t *testing.T) {
	// No kernel has this link kind, so LinkAdd fails with EOPNOTSUPP exactly
	// as it does for dummy on kernels built without it.
	withKind(t, "credbroker-none")
	inNetns(t, func() {
		first, second, ok := setupTwice(t)
		if !ok {
			return
		}
		if !first.Fallback || first.Link != LoopbackLink || first.LinkCreated {
			t.Errorf("first Setup = %+v, want fallback to %s without a created link", first, LoopbackLink)
		}
		if !slices.Equal(first.Added, []netip.Prefix{DefaultIPv4}) {
			t.Errorf("first Setup added %v, want [%s]", first.Added, DefaultIPv4)
		}
		if len(second.Added) != 0 || !second.Fallback {
			t.Errorf("second Setup = %+v, want fallback and nothing added", second)
		}
		got := addrsOn(t, LoopbackLink, netlink.FAMILY_V4)
		if n := count(got, DefaultIPv4); n != 1 {
			t.Errorf("%s carries %s %d times (addresses %v), want once", LoopbackLink, DefaultIPv4, n, got)
		}
		if linkExists(t, DefaultLinkName) {
			t.Errorf("link %s exists after fallback", DefaultLinkName)
		}
		// A fresh namespace starts with lo down; Setup must bring it up.
		if !reachable(t, DefaultIPv4.Addr()) {
			t.Errorf("%s not reachable after fallback", DefaultIPv4)
		}
	})
}

func TestSetupDedicatedLink(t *testing.T) {
	inNetns(t, func() {
		// The code path is the same for every kind. Use dummy where this
		// kernel has it; otherwise bridge, which it has (a bridge without
		// ports, up, carries local addresses like dummy does).
		kind := "dummy"
		if !kindSupported(t, kind) {
			kind = "bridge"
			if !kindSupported(t, kind) {
				t.Errorf("kernel has neither dummy nor bridge links")
				return
			}
		}
		old := dedicatedKind
		dedicatedKind = kind
		defer func() { dedicatedKind = old }()
		// Hosts have lo up; local delivery to any address goes through it.
		if lo, err := netlink.LinkByName(LoopbackLink); err == nil {
			if err := netlink.LinkSetUp(lo); err != nil {
				t.Errorf("setting lo up: %v", err)
			}
		}

		first, second, ok := setupTwice(t)
		if !ok {
			return
		}
		if first.Fallback || !first.LinkCreated || first.Link != DefaultLinkName || len(first.Added) != 1 {
			t.Errorf("first Setup = %+v, want %s created with one address added", first, DefaultLinkName)
		}
		if second.LinkCreated || len(second.Added) != 0 || !slices.Equal(second.Addresses, []netip.Prefix{DefaultIPv4}) {
			t.Errorf("second Setup = %+v, want nothing created or added, %s present", second, DefaultIPv4)
		}
		link, err := netlink.LinkByName(DefaultLinkName)
		if err != nil {
			t.Errorf("looking up %s: %v", DefaultLinkName, err)
			return
		}
		if link.Type() != kind || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("link %s: type %s, flags %v; want %s and up", DefaultLinkName, link.Type(), link.Attrs().Flags, kind)
		}
		if got := addrsOn(t, DefaultLinkName, netlink.FAMILY_V4); !slices.Equal(got, []netip.Prefix{DefaultIPv4}) {
			t.Errorf("addresses on %s = %v, want [%s]", DefaultLinkName, got, DefaultIPv4)
		}
		if got := addrsOn(t, LoopbackLink, netlink.FAMILY_V4); count(got, DefaultIPv4) != 0 {
			t.Errorf("%s also on %s: %v", DefaultIPv4, LoopbackLink, got)
		}
		if !reachable(t, DefaultIPv4.Addr()) {
			t.Errorf("%s not reachable on %s", DefaultIPv4, DefaultLinkName)
		}

	})
}

// TestSetupWithThisKernelsDummy runs the production configuration unchanged:
// the fallback must happen exactly when the kernel cannot create dummy links.
func TestSetupWithThisKernelsDummy(t *testing.T) {
	inNetns(t, func() {
		hasDummy := kindSupported(t, "dummy")
		for i := range 2 {
			res, err := Setup(context.Background(), Config{})
			if err != nil {
				t.Errorf("Setup #%d: %v", i+1, err)
				return
			}
			if res.Fallback == hasDummy {
				t.Errorf("Setup #%d: Fallback=%v on a kernel where dummy support=%v", i+1, res.Fallback, hasDummy)
			}
			if got := addrsOn(t, res.Link, netlink.FAMILY_V4); count(got, DefaultIPv4) != 1 {
				t.Errorf("Setup #%d: addresses on %s = %v, want %s once", i+1, res.Link, got, DefaultIPv4)
			}
		}
		t.Logf("dummy link type available: %v", hasDummy)
	})
}

func TestSetupIPv6(t *testing.T) {
	global := netip.MustParsePrefix("2001:db8::1/128")
	tests := []struct {
		name    string
		mode    IPv6Mode
		prepare func() error
		want6   bool
	}{
		{name: "auto without IPv6", mode: IPv6Auto, want6: false},
		{name: "auto with a global address", mode: IPv6Auto, want6: true, prepare: onLoopback(global)},
		{name: "auto with a default route", mode: IPv6Auto, want6: true, prepare: func() error {
			lo, err := netlink.LinkByName(LoopbackLink)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(lo); err != nil {
				return err
			}
			return netlink.RouteAdd(&netlink.Route{
				LinkIndex: lo.Attrs().Index,
				Dst:       &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
			})
		}},
		{name: "auto ignores its own address", mode: IPv6Auto, want6: false, prepare: onLoopback(DefaultIPv6)},
		{name: "on", mode: IPv6On, want6: true},
		{name: "off with a global address", mode: IPv6Off, want6: false, prepare: onLoopback(global)},
	}
	withKind(t, "credbroker-none") // loopback: the path this kernel takes
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t, func() {
				if tt.prepare != nil {
					if err := tt.prepare(); err != nil {
						t.Errorf("preparing namespace: %v", err)
						return
					}
				}
				for i := range 2 {
					res, err := Setup(context.Background(), Config{IPv6Mode: tt.mode})
					if err != nil {
						t.Errorf("Setup #%d: %v", i+1, err)
						return
					}
					if res.IPv6 != tt.want6 {
						t.Errorf("Setup #%d: IPv6=%v, want %v", i+1, res.IPv6, tt.want6)
					}
				}
				got := addrsOn(t, LoopbackLink, netlink.FAMILY_V6)
				// In "ignores its own address" the address was put there by
				// the test, so only the "configured" cases count it.
				if tt.want6 && count(got, DefaultIPv6) != 1 {
					t.Errorf("IPv6 addresses on lo = %v, want %s once", got, DefaultIPv6)
				}
				if !tt.want6 && tt.name != "auto ignores its own address" && count(got, DefaultIPv6) != 0 {
					t.Errorf("IPv6 addresses on lo = %v, want no %s", got, DefaultIPv6)
				}
				if tt.want6 && !reachable(t, DefaultIPv6.Addr()) {
					t.Errorf("%s not reachable", DefaultIPv6)
				}
			})
		})
	}
}

func TestSetupMigrateReq(t *testing.T) {
	withKind(t, "credbroker-none")
	t.Run("enables it in the current namespace", func(t *testing.T) {
		inNetns(t, func() {
			const path = "/proc/sys/net/ipv4/tcp_migrate_req"
			before, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("reading %s: %v (kernel older than 5.14?)", path, err)
				return
			}
			if strings.TrimSpace(string(before)) != "0" {
				t.Errorf("fresh namespace has tcp_migrate_req=%q, want 0", before)
			}
			for i := range 2 {
				res, err := Setup(context.Background(), Config{SetMigrateReq: true})
				if err != nil || !res.MigrateReq {
					t.Errorf("Setup #%d = %+v, %v; want MigrateReq", i+1, res, err)
				}
			}
			after, _ := os.ReadFile(path)
			if strings.TrimSpace(string(after)) != "1" {
				t.Errorf("tcp_migrate_req=%q after Setup, want 1", after)
			}
		})
	})
	t.Run("failure leaves the addresses in place", func(t *testing.T) {
		inNetns(t, func() {
			res, err := Setup(context.Background(), Config{
				SetMigrateReq: true,
				ProcSysNet:    filepath.Join(t.TempDir(), "missing"),
			})
			if !errors.Is(err, ErrMigrateReq) {
				t.Errorf("Setup error = %v, want ErrMigrateReq", err)
			}
			if res.MigrateReq || !slices.Equal(res.Addresses, []netip.Prefix{DefaultIPv4}) {
				t.Errorf("Setup = %+v, want the address and no MigrateReq", res)
			}
			if got := addrsOn(t, LoopbackLink, netlink.FAMILY_V4); count(got, DefaultIPv4) != 1 {
				t.Errorf("addresses on lo = %v, want %s", got, DefaultIPv4)
			}
		})
	})
}

func TestTeardown(t *testing.T) {
	inNetns(t, func() {
		ctx := context.Background()
		kind := "dummy"
		if !kindSupported(t, kind) {
			kind = "bridge"
		}
		old := dedicatedKind
		defer func() { dedicatedKind = old }()

		// Fallback layout: addresses on lo, with IPv6.
		dedicatedKind = "credbroker-none"
		if _, err := Setup(ctx, Config{IPv6Mode: IPv6On}); err != nil {
			t.Errorf("Setup on lo: %v", err)
			return
		}
		// And a dedicated link with a different configured name.
		dedicatedKind = kind
		cfg := Config{LinkName: "cbtest0", IPv4: netip.MustParsePrefix("169.254.170.99/32")}
		if _, err := Setup(ctx, cfg); err != nil {
			t.Errorf("Setup on %s: %v", cfg.LinkName, err)
			return
		}
		// An unrelated address on lo stays.
		other := netip.MustParsePrefix("192.0.2.7/32")
		lo, _ := netlink.LinkByName(LoopbackLink)
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(other)}); err != nil {
			t.Errorf("adding %s: %v", other, err)
		}

		for i := range 2 {
			if err := Teardown(ctx, Config{}); err != nil {
				t.Errorf("Teardown #%d (lo): %v", i+1, err)
			}
			if err := Teardown(ctx, cfg); err != nil {
				t.Errorf("Teardown #%d (%s): %v", i+1, cfg.LinkName, err)
			}
		}
		v4 := addrsOn(t, LoopbackLink, netlink.FAMILY_V4)
		v6 := addrsOn(t, LoopbackLink, netlink.FAMILY_V6)
		if count(v4, DefaultIPv4) != 0 || count(v6, DefaultIPv6) != 0 || count(v4, other) != 1 {
			t.Errorf("lo after Teardown: %v %v; want only %s of those", v4, v6, other)
		}
		if linkExists(t, cfg.LinkName) {
			t.Errorf("link %s still exists after Teardown", cfg.LinkName)
		}

		// A link of another kind under our name is not deleted.
		dedicatedKind = "credbroker-none"
		if err := netlink.LinkAdd(&netlink.GenericLink{LinkAttrs: netlink.LinkAttrs{Name: "cbforeign0"}, LinkType: kind}); err != nil {
			t.Errorf("creating cbforeign0: %v", err)
			return
		}
		if err := Teardown(ctx, Config{LinkName: "cbforeign0"}); err == nil {
			t.Errorf("Teardown deleted a %s link it did not create", kind)
		}
		if !linkExists(t, "cbforeign0") {
			t.Errorf("cbforeign0 was deleted")
		}
		// Setup refuses to reuse it as well.
		if _, err := Setup(ctx, Config{LinkName: "cbforeign0"}); err == nil {
			t.Errorf("Setup reused a %s link as its dedicated link", kind)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"long link name", Config{LinkName: "credbroker-0123456"}},
		{"link name with slash", Config{LinkName: "a/b"}},
		{"IPv6 as IPv4", Config{IPv4: DefaultIPv6}},
		{"IPv4 as IPv6", Config{IPv6: DefaultIPv4}},
		{"unknown mode", Config{IPv6Mode: "maybe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Setup(context.Background(), tt.cfg); err == nil {
				t.Errorf("Setup(%+v) succeeded, want a validation error", tt.cfg)
			}
		})
	}
	if _, err := (Config{}).withDefaults(); err != nil {
		t.Errorf("defaults are invalid: %v", err)
	}
}

func count(ps []netip.Prefix, p netip.Prefix) int {
	n := 0
	for _, q := range ps {
		if q == p {
			n++
		}
	}
	return n
}
