// Package reuseport opens TCP listeners with SO_REUSEPORT, so that two agent
// processes on one node (the old and the new one during a rolling update with
// maxSurge) can listen on the same address at the same time and both serve.
//
// The kernel spreads new connections across all listening sockets of the
// group by a hash of the connection's addresses. When one listener closes,
// connections that completed the handshake but were not yet accepted by it
// are reset, unless net.ipv4.tcp_migrate_req is 1 (Linux 5.14 and later), in
// which case the kernel moves them to another listener of the group. The
// agent's init step turns that sysctl on (see package linklocal).
//
// SECURITY: the kernel only lets sockets created by the same effective UID
// join a group, so any process with the agent's UID in the node's network
// namespace could take a share of the connections meant for the agent. Run
// the agent under a UID that nothing else on the node uses.
package reuseport

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenConfig returns a net.ListenConfig that sets SO_REUSEPORT on every
// socket before it is bound.
func ListenConfig() *net.ListenConfig {
	return &net.ListenConfig{Control: control}
}

// Listen announces on the local network address like net.Listen, with
// SO_REUSEPORT set. network must be a stream network ("tcp", "tcp4", "tcp6").
func Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("reuseport: network %q is not tcp, tcp4 or tcp6", network)
	}
	ln, err := ListenConfig().Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("reuseport: %w", err)
	}
	return ln, nil
}

func control(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return fmt.Errorf("reaching socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
	}
	return nil
}
