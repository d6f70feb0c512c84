package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/credbroker/agent/pkg/handoff"
	"github.com/credbroker/agent/pkg/linklocal"
)

// initNode runs in the DaemonSet's init container, with NET_ADMIN: it puts
// the service addresses on the node so that `agent serve` can bind them
// without that capability.
func initNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg linklocal.Config
	var ipv4, ipv6, ipv6Mode string
	fs.StringVar(&cfg.LinkName, "link-name", linklocal.DefaultLinkName, "dedicated link for the service addresses (falls back to lo where the kernel has no dummy links)")
	fs.StringVar(&ipv4, "ipv4", linklocal.DefaultIPv4.String(), "IPv4 service address")
	fs.StringVar(&ipv6, "ipv6", linklocal.DefaultIPv6.String(), "IPv6 service address")
	fs.StringVar(&ipv6Mode, "ipv6-mode", string(linklocal.IPv6Auto), "auto (when the node has IPv6), on or off")
	fs.BoolVar(&cfg.SetMigrateReq, "set-tcp-migrate-req", true, "turn on net.ipv4.tcp_migrate_req so that a rolling update resets no queued connection")
	fs.StringVar(&cfg.ProcSysNet, "proc-sys-net", linklocal.DefaultProcSysNet, "where the node's /proc/sys/net is mounted")
	var handoffDir string
	var handoffOwner ownerFlag
	fs.StringVar(&handoffDir, "handoff-dir", "", "directory of `agent serve --handoff-socket`, made mode 0700 and given to --handoff-dir-owner (needs CAP_CHOWN); empty: none")
	fs.Var(&handoffOwner, "handoff-dir-owner", "UID:GID the agent runs as, owner of --handoff-dir")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agent init: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	var err error
	if cfg.IPv4, err = netip.ParsePrefix(ipv4); err != nil {
		return fmt.Errorf("--ipv4: %w", err)
	}
	if cfg.IPv6, err = netip.ParsePrefix(ipv6); err != nil {
		return fmt.Errorf("--ipv6: %w", err)
	}
	cfg.IPv6Mode = linklocal.IPv6Mode(ipv6Mode)
	if handoffDir != "" {
		if !handoffOwner.set {
			return errors.New("--handoff-dir needs --handoff-dir-owner")
		}
		if err := handoff.PrepareDir(handoffDir, handoffOwner.uid, handoffOwner.gid); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "hand-off directory %s: owner %d:%d, mode 0700\n", handoffDir, handoffOwner.uid, handoffOwner.gid)
	}
	res, err := linklocal.Setup(ctx, cfg)
	if err != nil && !errors.Is(err, linklocal.ErrMigrateReq) {
		return err
	}
	fmt.Fprintf(stdout, "link %s: addresses %v (added %v), fallback to loopback: %t, tcp_migrate_req: %t\n",
		res.Link, res.Addresses, res.Added, res.Fallback, res.MigrateReq)
	if err != nil {
		// The addresses are in place; the agent works, only rollouts may
		// reset a few queued connections.
		fmt.Fprintf(stderr, "warning: %v\n", err)
	}
	return nil
}

// ownerFlag is a UID:GID pair.
type ownerFlag struct {
	uid, gid int
	set      bool
}

func (o *ownerFlag) String() string {
	if o == nil || !o.set {
		return ""
	}
	return fmt.Sprintf("%d:%d", o.uid, o.gid)
}

func (o *ownerFlag) Set(v string) error {
	u, g, ok := strings.Cut(v, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return fmt.Errorf("%q is not UID:GID", v)
	}
	o.uid, o.gid, o.set = uid, gid, true
	return nil
}
