// Package linklocal puts the agent's link-local service addresses on the node
// (169.254.170.23/32, and fd00:ec2::23/128 where the node has IPv6) so that
// the agent can listen on them and every pod on the node can reach them
// through its default route.
//
// Guarantees:
//
//   - Setup is idempotent: an address or link that is already in place is
//     success, so the DaemonSet's init container can run it on every start.
//   - The addresses go on a dedicated link (a `dummy` link named
//     DefaultLinkName) so that they are easy to find and to remove. Where the
//     kernel has no `dummy` link type (netlink answers EOPNOTSUPP, "Unknown
//     device type"), Setup falls back to the loopback link `lo`, which every
//     kernel has; Result.Fallback says so. Only that one error triggers the
//     fallback: any other failure is returned.
//   - When Setup returns without error, the kernel routes every configured
//     address to this host: a process can bind it and reach it at once
//     (IPv6 local routes appear asynchronously, so Setup waits for them).
//   - Setup never removes or changes addresses it did not configure.
//   - All netlink and /proc/sys work happens in the network namespace of the
//     calling OS thread (the host's, for a hostNetwork init container).
//
// IPv6 is configured when cfg.IPv6Mode is IPv6On, or, in IPv6Auto (the
// default), when the node has an IPv6 default route in its main table or a
// global unicast IPv6 address (ULA included) other than the service address
// itself: that is what a node whose pods can reach an IPv6 address through the
// node looks like. A node with neither (or with IPv6 disabled, which hides
// both) gets the IPv4 address only.
package linklocal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	DefaultLinkName   = "credbroker0"
	DefaultProcSysNet = "/proc/sys/net"
	// LoopbackLink is the link the addresses go on when the kernel has no
	// dummy link type, or when Config.LinkName names it explicitly.
	LoopbackLink = "lo"
)

var (
	// DefaultIPv4 is the address AWS SDKs accept in
	// AWS_CONTAINER_CREDENTIALS_FULL_URI (the EKS Pod Identity address).
	DefaultIPv4 = netip.MustParsePrefix("169.254.170.23/32")
	// DefaultIPv6 is its IPv6 counterpart, also accepted by the SDKs.
	DefaultIPv6 = netip.MustParsePrefix("fd00:ec2::23/128")
)

// ErrMigrateReq is wrapped by the error Setup returns when it could not turn
// on net.ipv4.tcp_migrate_req. The addresses are in place when this is the
// only failure, so a caller may treat it as a warning: rolling updates then
// reset the few connections still queued on the old agent's listener, which
// SDKs retry.
var ErrMigrateReq = errors.New("linklocal: cannot enable net.ipv4.tcp_migrate_req")

// IPv6Mode says when Setup configures the IPv6 address.
type IPv6Mode string

// IPv6 modes.
const (
	// IPv6Auto configures IPv6 when the node has IPv6 (see the package doc).
	IPv6Auto IPv6Mode = "auto"
	// IPv6On always configures IPv6; Setup fails where the kernel refuses it.
	IPv6On IPv6Mode = "on"
	// IPv6Off never configures IPv6.
	IPv6Off IPv6Mode = "off"
)

// dedicatedKind is the netlink link kind of the dedicated link. It is a
// variable only so that tests can stand in a kind this kernel has (the code
// path does not depend on the kind) or one no kernel has (to force the
// fallback on kernels that do have dummy).
var dedicatedKind = "dummy"

// Config says which addresses go where. The zero value of every field means
// its default.
type Config struct {
	// LinkName is the dedicated link to create or reuse. Default
	// DefaultLinkName. "lo" puts the addresses on loopback directly.
	// At most 15 bytes (IFNAMSIZ-1).
	LinkName string
	// IPv4 is the IPv4 service address. Default DefaultIPv4.
	IPv4 netip.Prefix
	// IPv6 is the IPv6 service address. Default DefaultIPv6.
	IPv6 netip.Prefix
	// IPv6Mode says when IPv6 is configured. Default IPv6Auto.
	IPv6Mode IPv6Mode
	// SetMigrateReq turns on net.ipv4.tcp_migrate_req in the current network
	// namespace, so that connections queued on an SO_REUSEPORT listener that
	// closes move to another listener of the same group instead of being
	// reset. Default false.
	SetMigrateReq bool
	// ProcSysNet is where the net sysctls are mounted. Default
	// DefaultProcSysNet. In a container /proc/sys is read-only, so the
	// DaemonSet mounts the host's /proc/sys/net elsewhere and names it here.
	ProcSysNet string
}

// Result says what Setup found and did.
type Result struct {
	// Link is the link that carries the addresses.
	Link string
	// Fallback is true when the kernel has no dummy link type and the
	// addresses went on loopback instead.
	Fallback bool
	// LinkCreated is true when this call created the dedicated link.
	LinkCreated bool
	// Addresses are the service addresses now on Link.
	Addresses []netip.Prefix
	// Added are the addresses this call added (empty on a re-run).
	Added []netip.Prefix
	// IPv6 is true when the IPv6 address was configured.
	IPv6 bool
	// MigrateReq is true when net.ipv4.tcp_migrate_req is 1 after the call
	// (only checked when Config.SetMigrateReq is set).
	MigrateReq bool
}

func (c Config) withDefaults() (Config, error) {
	c.LinkName = cmp.Or(c.LinkName, DefaultLinkName)
	if !c.IPv4.IsValid() {
		c.IPv4 = DefaultIPv4
	}
	if !c.IPv6.IsValid() {
		c.IPv6 = DefaultIPv6
	}
	c.IPv6Mode = cmp.Or(c.IPv6Mode, IPv6Auto)
	c.ProcSysNet = cmp.Or(c.ProcSysNet, DefaultProcSysNet)
	switch {
	case len(c.LinkName) >= unix.IFNAMSIZ || strings.ContainsAny(c.LinkName, "/ \t\n:"):
		return c, fmt.Errorf("linklocal: invalid link name %q", c.LinkName)
	case !c.IPv4.Addr().Is4():
		return c, fmt.Errorf("linklocal: IPv4 address %s is not IPv4", c.IPv4)
	case !c.IPv6.Addr().Is6() || c.IPv6.Addr().Is4In6():
		return c, fmt.Errorf("linklocal: IPv6 address %s is not IPv6", c.IPv6)
	}
	switch c.IPv6Mode {
	case IPv6Auto, IPv6On, IPv6Off:
	default:
		return c, fmt.Errorf("linklocal: unknown IPv6 mode %q (want auto, on or off)", c.IPv6Mode)
	}
	return c, nil
}

// Setup puts the service addresses on the dedicated link, creating it if
// needed, or on loopback where the kernel has no dummy link type, and turns
// on tcp_migrate_req if asked. It is safe to run again: what is already in
// place counts as success.
//
// When the addresses are in place but the sysctl could not be written, Setup
// returns the Result and an error wrapping ErrMigrateReq.
func Setup(ctx context.Context, cfg Config) (Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Result{}, err
	}
	var res Result

	link, created, fallback, err := ensureLink(cfg.LinkName)
	if err != nil {
		return res, err
	}
	res.Link, res.LinkCreated, res.Fallback = link.Attrs().Name, created, fallback

	want := []netip.Prefix{cfg.IPv4}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("linklocal: %w", err)
	}
	switch cfg.IPv6Mode {
	case IPv6On:
		res.IPv6 = true
	case IPv6Auto:
		res.IPv6, err = hasIPv6(cfg.IPv6.Addr())
		if err != nil {
			return res, err
		}
	}
	if res.IPv6 {
		want = append(want, cfg.IPv6)
	}

	for _, p := range want {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("linklocal: %w", err)
		}
		added, err := ensureAddr(link, p)
		if err != nil {
			return res, err
		}
		if err := waitLocalRoute(ctx, p.Addr()); err != nil {
			return res, err
		}
		res.Addresses = append(res.Addresses, p)
		if added {
			res.Added = append(res.Added, p)
		}
	}

	if cfg.SetMigrateReq {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("linklocal: %w", err)
		}
		if err := enableMigrateReq(cfg.ProcSysNet); err != nil {
			return res, err
		}
		res.MigrateReq = true
	}
	return res, nil
}

// Teardown removes what Setup put in place: the service addresses on
// loopback and the dedicated link (with its addresses), if it exists and is
// of the dedicated kind. It leaves tcp_migrate_req alone, since other
// software may rely on it. Teardown of nothing is success.
func Teardown(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if cfg.LinkName != LoopbackLink {
		link, err := netlink.LinkByName(cfg.LinkName)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
		case err != nil:
			return fmt.Errorf("linklocal: looking up link %s: %w", cfg.LinkName, err)
		case link.Type() != dedicatedKind:
			return fmt.Errorf("linklocal: link %s is of type %s, not %s: not removing a link this package did not create",
				cfg.LinkName, link.Type(), dedicatedKind)
		default:
			if err := netlink.LinkDel(link); err != nil {
				return fmt.Errorf("linklocal: deleting link %s: %w", cfg.LinkName, err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("linklocal: %w", err)
	}
	lo, err := netlink.LinkByName(LoopbackLink)
	if err != nil {
		return fmt.Errorf("linklocal: looking up link %s: %w", LoopbackLink, err)
	}
	for _, p := range []netip.Prefix{cfg.IPv4, cfg.IPv6} {
		err := netlink.AddrDel(lo, &netlink.Addr{IPNet: ipNet(p)})
		// EADDRNOTAVAIL: the address is not there (IPv4); ENOENT, ENODEV: the
		// same for IPv6, or IPv6 is disabled.
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) &&
			!errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EAFNOSUPPORT) {
			return fmt.Errorf("linklocal: removing %s from %s: %w", p, LoopbackLink, err)
		}
	}
	return nil
}

// ensureLink returns the link to put the addresses on, creating the dedicated
// link and bringing it up as needed.
func ensureLink(name string) (link netlink.Link, created, fallback bool, err error) {
	if name != LoopbackLink {
		link, err = netlink.LinkByName(name)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			err = netlink.LinkAdd(&netlink.GenericLink{
				LinkAttrs: netlink.LinkAttrs{Name: name},
				LinkType:  dedicatedKind,
			})
			switch {
			case errors.Is(err, unix.EOPNOTSUPP):
				// The kernel has no such link type and cannot load it.
				fallback = true
			case errors.Is(err, unix.EEXIST):
				// Another init created it between our lookup and add.
			case err != nil:
				return nil, false, false, fmt.Errorf("linklocal: creating %s link %s: %w", dedicatedKind, name, err)
			default:
				created = true
			}
			if !fallback {
				if link, err = netlink.LinkByName(name); err != nil {
					return nil, false, false, fmt.Errorf("linklocal: looking up link %s: %w", name, err)
				}
			}
		case err != nil:
			return nil, false, false, fmt.Errorf("linklocal: looking up link %s: %w", name, err)
		case link.Type() != dedicatedKind:
			// Reusing a link someone else made for another purpose would tie
			// our addresses to its life cycle.
			return nil, false, false, fmt.Errorf("linklocal: link %s exists with type %s, want %s",
				name, link.Type(), dedicatedKind)
		}
	}
	if name == LoopbackLink || fallback {
		if link, err = netlink.LinkByName(LoopbackLink); err != nil {
			return nil, false, false, fmt.Errorf("linklocal: looking up link %s: %w", LoopbackLink, err)
		}
	}
	// Addresses on a link that is down have no local route, so nothing
	// reaches them. Setting a link up that is up is a no-op.
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, false, false, fmt.Errorf("linklocal: setting link %s up: %w", link.Attrs().Name, err)
		}
	}
	return link, created, fallback, nil
}

// ensureAddr adds p to link unless it is there already.
func ensureAddr(link netlink.Link, p netip.Prefix) (added bool, err error) {
	family := netlink.FAMILY_V4
	if p.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := listRetry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, family) })
	if err != nil {
		return false, fmt.Errorf("linklocal: listing addresses on %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if prefixOf(a.IPNet) == p {
			return false, nil
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		// Duplicate address detection would hold the address "tentative"
		// (unusable for binding) for a second or more; it is a service
		// address that exists on every node, so there is nothing to detect.
		addr.Flags = unix.IFA_F_NODAD
	}
	err = netlink.AddrAdd(link, addr)
	switch {
	case errors.Is(err, unix.EEXIST):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("linklocal: adding %s to %s: %w", p, link.Attrs().Name, err)
	}
	return true, nil
}

// localRouteWait bounds how long Setup waits for the kernel to install the
// local route of an address it added.
const localRouteWait = 5 * time.Second

// waitLocalRoute waits until the kernel routes addr to this host. IPv4 local
// routes are installed before the netlink request returns; IPv6 ones only
// once the address has passed (or skipped) duplicate address detection, which
// runs on a kernel work queue after the request returned. Without the wait, a
// process started right after Setup can bind the address but not reach it.
func waitLocalRoute(ctx context.Context, addr netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, localRouteWait)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		routes, err := netlink.RouteGet(addr.AsSlice())
		for _, r := range routes {
			if r.Type == unix.RTN_LOCAL {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("route is not local")
			}
			return fmt.Errorf("linklocal: waiting for the local route to %s: %w (last lookup: %w)", addr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// hasIPv6 reports whether the node has an IPv6 default route or a global
// unicast IPv6 address other than own.
func hasIPv6(own netip.Addr) (bool, error) {
	routes, err := listRetry(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V6) })
	if err != nil {
		return false, fmt.Errorf("linklocal: listing IPv6 routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			return true, nil
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			return true, nil
		}
	}
	addrs, err := listRetry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V6) })
	if err != nil {
		return false, fmt.Errorf("linklocal: listing IPv6 addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() && ip != own {
			return true, nil
		}
	}
	return false, nil
}

// enableMigrateReq sets net.ipv4.tcp_migrate_req to 1 unless it is already.
func enableMigrateReq(procSysNet string) error {
	path := filepath.Join(procSysNet, "ipv4", "tcp_migrate_req")
	cur, err := os.ReadFile(path)
	if err != nil {
		// ENOENT here means a kernel older than 5.14 (or a wrong mount).
		return fmt.Errorf("%w: reading %s: %w", ErrMigrateReq, path, err)
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("%w: writing %s: %w", ErrMigrateReq, path, err)
	}
	return nil
}

// listRetry runs a netlink dump again when the kernel reports that the table
// changed during the dump (the results are then possibly incomplete).
func listRetry[T any](list func() ([]T, error)) ([]T, error) {
	const attempts = 5
	var err error
	for range attempts {
		var out []T
		out, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}
