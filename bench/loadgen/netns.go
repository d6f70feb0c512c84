package loadgen

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Namespace is a network namespace that connections can be opened in. A
// socket belongs to the namespace it was created in for its whole life, so
// only the dial has to happen inside; reads and writes can then run on any
// thread.
type Namespace struct {
	name string
	fd   int
}

// OpenNamespace opens a network namespace by name (as created by
// `ip netns add`, found under /var/run/netns) or by path.
func OpenNamespace(nameOrPath string) (*Namespace, error) {
	path := nameOrPath
	if !filepath.IsAbs(path) {
		path = filepath.Join("/var/run/netns", nameOrPath)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	return &Namespace{name: filepath.Base(path), fd: fd}, nil
}

// Name is the namespace's file name.
func (n *Namespace) Name() string { return n.name }

// Close releases the namespace handle. Connections opened in it stay open.
func (n *Namespace) Close() error { return unix.Close(n.fd) }

var (
	hostNSOnce sync.Once
	hostNSFD   int
	hostNSErr  error
)

// hostNamespace is the namespace this process started in, where a thread
// returns after dialing elsewhere.
func hostNamespace() (int, error) {
	hostNSOnce.Do(func() {
		hostNSFD, hostNSErr = unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if hostNSErr != nil {
			hostNSErr = fmt.Errorf("opening this process's network namespace: %w", hostNSErr)
		}
	})
	return hostNSFD, hostNSErr
}

// DialContext connects to addr from inside n, or from this process's own
// namespace when n is nil.
//
// The dial runs on a goroutine of its own, locked to its OS thread for the
// time the thread is in n. If the thread cannot be moved back, that
// goroutine exits still locked, and the Go runtime then destroys the thread
// instead of handing it to other goroutines: no other code ever runs in the
// wrong namespace.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if n == nil {
		return d.DialContext(ctx, network, addr)
	}
	host, err := hostNamespace()
	if err != nil {
		return nil, err
	}
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("entering network namespace %s: %w", n.name, err)}
			return
		}
		conn, err := d.DialContext(ctx, network, addr)
		if serr := unix.Setns(host, unix.CLONE_NEWNET); serr != nil {
			// Stay locked: the thread dies with this goroutine.
			if conn != nil {
				conn.Close()
			}
			done <- result{err: fmt.Errorf("leaving network namespace %s: %w", n.name, serr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{conn: conn, err: err}
	}()
	r := <-done
	return r.conn, r.err
}

// OpenNamespaces opens every namespace whose name matches the glob pattern
// under /var/run/netns, sorted by name.
func OpenNamespaces(pattern string) ([]*Namespace, error) {
	paths, err := filepath.Glob(filepath.Join("/var/run/netns", pattern))
	if err != nil {
		return nil, fmt.Errorf("matching network namespaces %q: %w", pattern, err)
	}
	out := make([]*Namespace, 0, len(paths))
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			continue
		}
		ns, err := OpenNamespace(p)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out = append(out, ns)
	}
	return out, nil
}
