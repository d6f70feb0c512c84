//go:build linux

// Package netns simulates pods on one machine: each Namespace is a Linux
// network namespace joined to the host by a veth pair, with the pod's own
// addresses on its eth0, so that a connection made from inside arrives at a
// host listener with the pod's address as its source, exactly as traffic
// from a real pod reaches a hostNetwork agent.
//
// Layout of one namespace (the shape Calico uses):
//
//	host                                   namespace NAME
//	HOSTLINK  169.254.1.1/32, fe80::1      eth0  POD/32, POD6/128
//	route POD/32 dev HOSTLINK              route 169.254.1.1 dev eth0
//	route POD6/128 dev HOSTLINK            default via 169.254.1.1 (and fe80::1)
//
// Every host end carries the same gateway address, so a namespace never
// depends on another one existing. Nothing is forwarded: the namespaces can
// reach addresses of the host itself (its loopback range excepted, which is
// per namespace) and nothing beyond it.
//
// Guarantees:
//   - Create either returns a working namespace or removes what it made.
//   - Close and Cleanup are idempotent; Cleanup(prefix) also removes the
//     leftovers of an earlier run that crashed before calling Close.
//   - DialContext never leaves a goroutine's OS thread in another network
//     namespace: if switching back fails, the thread is discarded.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the ip
// command from iproute2.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
)

// Gateway addresses every host end of a veth pair carries. Pods route
// everything through them.
var (
	Gateway4 = netip.MustParseAddr("169.254.1.1")
	Gateway6 = netip.MustParseAddr("fe80::1")
)

// Link-local addresses the container credentials API listens on.
var (
	ServiceAddr4 = netip.MustParseAddr("169.254.170.23")
	ServiceAddr6 = netip.MustParseAddr("fd00:ec2::23")
)

// ErrInvalidName means a name or prefix does not fit the rules in Spec.
var ErrInvalidName = errors.New("netns: invalid name")

// validName keeps names usable both as namespace names and, with one more
// character, as interface names (at most 15 bytes).
var validName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,13}$`)

// Spec describes one simulated pod's network.
type Spec struct {
	// Name names the namespace (/var/run/netns/NAME); the host end of the
	// veth pair is NAME+"h". At most 14 characters of [a-z0-9-], starting
	// with a letter. Start all names of one user with a common prefix and
	// pass that prefix to Cleanup.
	Name string
	// IP is the pod's IPv4 address. Required. Use addresses that nothing
	// else on the machine uses; 10.244.0.0/16 is conventional for pods.
	// Choose a distinct block per concurrent user of this package.
	IP netip.Addr
	// IPv6 is the pod's optional IPv6 address.
	IPv6 netip.Addr
}

// Namespace is a live simulated pod network. Its methods are safe for
// concurrent use.
type Namespace struct {
	spec     Spec
	hostLink string

	handle *Handle // open on /var/run/netns/NAME, for dials

	closeOnce sync.Once
	closeErr  error
}

// Create makes the namespace, the veth pair, the addresses and the routes.
// A namespace or host link of the same name left by an earlier run is
// removed first.
func Create(ctx context.Context, spec Spec) (*Namespace, error) {
	if !validName.MatchString(spec.Name) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, spec.Name)
	}
	if !spec.IP.Is4() {
		return nil, fmt.Errorf("netns %s: IP %v is not an IPv4 address", spec.Name, spec.IP)
	}
	if spec.IPv6.IsValid() && !spec.IPv6.Is6() {
		return nil, fmt.Errorf("netns %s: IPv6 %v is not an IPv6 address", spec.Name, spec.IPv6)
	}
	n := &Namespace{spec: spec, hostLink: spec.Name + "h"}
	if err := n.remove(ctx); err != nil {
		return nil, fmt.Errorf("removing leftovers of netns %s: %w", spec.Name, err)
	}
	if err := n.setup(ctx); err != nil {
		_ = n.remove(context.WithoutCancel(ctx))
		return nil, err
	}
	h, err := Open(n.Path())
	if err != nil {
		_ = n.remove(context.WithoutCancel(ctx))
		return nil, err
	}
	n.handle = h
	return n, nil
}

func (n *Namespace) setup(ctx context.Context) error {
	s := n.spec
	if err := run(ctx, nil, "ip", "netns", "add", s.Name); err != nil {
		return err
	}
	// Host side in one batch: one fork instead of five.
	host := []string{
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", n.hostLink, s.Name),
		fmt.Sprintf("addr add %s/32 dev %s", Gateway4, n.hostLink),
		fmt.Sprintf("link set %s up", n.hostLink),
		fmt.Sprintf("route add %s/32 dev %s scope link src %s", s.IP, n.hostLink, Gateway4),
	}
	if s.IPv6.IsValid() {
		host = append(host,
			fmt.Sprintf("addr add %s/64 dev %s nodad", Gateway6, n.hostLink),
			fmt.Sprintf("route add %s/128 dev %s", s.IPv6, n.hostLink))
	}
	if err := run(ctx, batch(host), "ip", "-batch", "-"); err != nil {
		return err
	}
	pod := []string{
		"link set lo up",
		fmt.Sprintf("addr add %s/32 dev eth0", s.IP),
		"link set eth0 up",
		fmt.Sprintf("route add %s/32 dev eth0 scope link", Gateway4),
		fmt.Sprintf("route add default via %s dev eth0", Gateway4),
	}
	if s.IPv6.IsValid() {
		// Without nodad the address stays tentative for a second or two and
		// connections from it fail.
		pod = append(pod,
			fmt.Sprintf("addr add %s/128 dev eth0 nodad", s.IPv6),
			fmt.Sprintf("route add default via %s dev eth0", Gateway6))
	}
	return run(ctx, batch(pod), "ip", "-n", s.Name, "-batch", "-")
}

// Name returns the namespace's name.
func (n *Namespace) Name() string { return n.spec.Name }

// IP returns the pod's IPv4 address.
func (n *Namespace) IP() netip.Addr { return n.spec.IP }

// IPv6 returns the pod's IPv6 address, or the zero Addr when it has none.
func (n *Namespace) IPv6() netip.Addr { return n.spec.IPv6 }

// HostLink returns the name of the host end of the veth pair.
func (n *Namespace) HostLink() string { return n.hostLink }

// Path returns the namespace's bind mount, usable with setns(2) and nsenter.
func (n *Namespace) Path() string { return "/var/run/netns/" + n.spec.Name }

// Exec returns a command that runs args inside the namespace (through
// ip netns exec, which also gives it the namespace's /etc/netns files).
// The caller sets Env, Stdout and so on, and runs it.
func (n *Namespace) Exec(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.spec.Name}, args...)...)
}

// DialContext opens a connection from inside the namespace; see
// Handle.DialContext.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.handle.DialContext(ctx, network, addr)
}

// Listen opens a listener inside the namespace; see Handle.Listen.
func (n *Namespace) Listen(network, addr string) (net.Listener, error) {
	return n.handle.Listen(network, addr)
}

// Close removes the namespace and the veth pair. It is idempotent. Processes
// still running inside keep the namespace alive but cut off from the host.
func (n *Namespace) Close() error {
	n.closeOnce.Do(func() {
		_ = n.handle.Close()
		n.closeErr = n.remove(context.Background())
	})
	return n.closeErr
}

func (n *Namespace) remove(ctx context.Context) error {
	// Deleting either end of a veth pair deletes both; delete the host end
	// explicitly because a namespace kept alive by a stray process would
	// otherwise keep it.
	var errs []error
	if linkExists(n.hostLink) {
		if err := run(ctx, nil, "ip", "link", "del", n.hostLink); err != nil && linkExists(n.hostLink) {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat(n.Path()); err == nil {
		if err := run(ctx, nil, "ip", "netns", "del", n.spec.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes every namespace and host link whose name starts with
// prefix: those of this run and those left by a crashed earlier one.
func Cleanup(ctx context.Context, prefix string) error {
	if !validName.MatchString(prefix) {
		return fmt.Errorf("%w: prefix %q", ErrInvalidName, prefix)
	}
	var errs []error
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("listing namespaces: %w", err))
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			n := &Namespace{spec: Spec{Name: e.Name()}, hostLink: e.Name() + "h"}
			errs = append(errs, n.remove(ctx))
		}
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing links: %w", err))
	}
	for _, ifc := range ifaces {
		if strings.HasPrefix(ifc.Name, prefix) && linkExists(ifc.Name) {
			if err := run(ctx, nil, "ip", "link", "del", ifc.Name); err != nil && linkExists(ifc.Name) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// AddHostAddr puts addr (as a /32 or /128) on the host's loopback device so
// that host listeners can bind it and namespaces can reach it through their
// gateway. It succeeds if the address is already there. The dummy link type
// that would be the usual home for such an address is missing on some
// kernels; lo works everywhere.
func AddHostAddr(ctx context.Context, addr netip.Addr) error {
	bits := 32
	if addr.Is6() {
		bits = 128
	}
	prefix := netip.PrefixFrom(addr, bits).String()
	if hostHasAddr(addr) {
		return nil
	}
	args := []string{"addr", "add", prefix, "dev", "lo"}
	if addr.Is6() {
		args = append([]string{"-6"}, append(args, "nodad")...)
	}
	if err := run(ctx, nil, "ip", args...); err != nil && !hostHasAddr(addr) {
		return err
	}
	return nil
}

// RemoveHostAddr takes addr off the host's loopback device; it succeeds if
// the address is not there.
func RemoveHostAddr(ctx context.Context, addr netip.Addr) error {
	if !hostHasAddr(addr) {
		return nil
	}
	bits := 32
	if addr.Is6() {
		bits = 128
	}
	err := run(ctx, nil, "ip", "addr", "del", netip.PrefixFrom(addr, bits).String(), "dev", "lo")
	if err != nil && hostHasAddr(addr) {
		return err
	}
	return nil
}

func hostHasAddr(addr netip.Addr) bool {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return false
	}
	addrs, err := lo.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == addr {
			return true
		}
	}
	return false
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func batch(lines []string) []byte {
	return []byte(strings.Join(lines, "\n") + "\n")
}

// run runs a command and folds its stderr into the error.
func run(ctx context.Context, stdin []byte, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
