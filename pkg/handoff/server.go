package handoff

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/credbroker/agent/pkg/broker"
)

// Source is what a sender hands over: *broker.Broker is one.
type Source interface {
	Export() []broker.Carried
}

// ServerConfig configures a Listener.
type ServerConfig struct {
	Path    string // the socket's path; its directory must exist
	Source  Source // required
	Metrics *Metrics
	Logger  *slog.Logger // default: discard
	// Timeout bounds one successor's hand-off. Default 5s.
	Timeout time.Duration
}

// Listener serves hand-offs on a UNIX socket.
type Listener struct {
	cfg ServerConfig
	ln  *net.UnixListener
	uid uint32
	ino uint64 // the socket file's inode, to remove only our own path
}

// Listen binds the socket and puts it at cfg.Path, replacing whatever was
// there (the predecessor's socket, which it no longer needs once this
// agent serves): the socket is bound under a temporary name and renamed,
// so that a successor never finds the path missing or half made.
func Listen(cfg ServerConfig) (*Listener, error) {
	if cfg.Source == nil || cfg.Path == "" {
		return nil, errors.New("handoff: a path and a source are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, 5*time.Second)
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	tmp := cfg.Path + "." + hex.EncodeToString(suffix[:])
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("handoff: listening on %s: %w", tmp, err)
	}
	// Close must not unlink the path: by then it may be the successor's.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*Listener, error) {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("handoff: %w", err))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(tmp, &st); err != nil {
		return fail(fmt.Errorf("handoff: %w", err))
	}
	if err := os.Rename(tmp, cfg.Path); err != nil {
		return fail(fmt.Errorf("handoff: placing the socket at %s: %w", cfg.Path, err))
	}
	return &Listener{cfg: cfg, ln: ln, uid: uint32(os.Geteuid()), ino: st.Ino}, nil
}

// Serve answers successors one at a time until ctx is done, then closes
// the socket and removes its path unless a successor has taken it over.
func (l *Listener) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { l.ln.Close() })
	defer stop()
	defer l.close()
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("handoff: accepting: %w", err)
		}
		// One at a time: a node has one successor, and a peer that stalls
		// is cut off by the deadline.
		l.serveConn(c)
	}
}

func (l *Listener) close() {
	l.ln.Close()
	var st syscall.Stat_t
	if err := syscall.Stat(l.cfg.Path, &st); err == nil && st.Ino == l.ino {
		_ = os.Remove(l.cfg.Path)
	}
}

func (l *Listener) count(result string) {
	if l.cfg.Metrics != nil {
		l.cfg.Metrics.sent.WithLabelValues(result).Inc()
	}
}

func (l *Listener) serveConn(c *net.UnixConn) {
	defer c.Close()
	start := time.Now()
	_ = c.SetDeadline(start.Add(l.cfg.Timeout))
	if err := checkPeer(c, l.uid); err != nil {
		// SECURITY: not a byte is written to a peer of another UID.
		l.count(resultPeerRefused)
		l.cfg.Logger.Warn("hand-off refused: the peer is not this agent's UID", "error", err)
		return
	}
	entries := l.cfg.Source.Export()
	w := bufio.NewWriterSize(c, 64<<10)
	err := writeFrame(w, hello{V: version, Entries: len(entries)})
	for i := 0; err == nil && i < len(entries); i++ {
		err = writeFrame(w, toWire(entries[i]))
	}
	if err == nil {
		err = writeFrame(w, nil)
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		l.count(resultFailed)
		l.cfg.Logger.Warn("hand-off to a successor failed", "entries", len(entries), "error", err)
		return
	}
	l.count(resultComplete)
	if l.cfg.Metrics != nil {
		l.cfg.Metrics.sentN.Add(float64(len(entries)))
	}
	l.cfg.Logger.Info("hand-off served to a successor", "entries", len(entries), "duration", time.Since(start).String())
}

// PrepareDir makes dir a directory that only uid (and root) may enter, for
// the socket: the DaemonSet's init container runs it as root with
// CAP_CHOWN, because the kubelet creates a hostPath directory owned by
// root. A directory already owned by uid:gid with mode 0700 is left alone.
func PrepareDir(dir string, uid, gid int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("handoff: creating %s: %w", dir, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	if int(st.Uid) == uid && int(st.Gid) == gid && st.Mode&0o777 == 0o700 {
		return nil
	}
	// Mode first, while root may still change it as the owner (no
	// CAP_FOWNER needed), then the owner.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("handoff: giving %s to %d:%d: %w", dir, uid, gid, err)
	}
	return nil
}
