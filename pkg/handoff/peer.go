package handoff

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ErrPeerUID means the other end of the socket runs under another UID than
// this agent: it gets nothing and gives nothing.
var ErrPeerUID = errors.New("handoff: peer runs under another UID than this agent")

// PeerUID returns the UID the kernel recorded for the process at the other
// end of c when it connected (or listened): SO_PEERCRED, which the peer
// cannot forge.
func PeerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("reaching the socket: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("reaching the socket: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("reading SO_PEERCRED: %w", serr)
	}
	return cred.Uid, nil
}

// checkPeer returns nil only if c's peer runs under uid.
func checkPeer(c *net.UnixConn, uid uint32) error {
	got, err := PeerUID(c)
	if err != nil {
		return err
	}
	if got != uid {
		return fmt.Errorf("%w (peer UID %d)", ErrPeerUID, got)
	}
	return nil
}
