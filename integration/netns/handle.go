package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Handle is an open reference to a network namespace, one this package
// created or any other (`ip netns add`), from which connections can be
// opened. A socket belongs to the namespace it was created in for its whole
// life, so only the dial happens inside; reads and writes then run on any
// thread. Its methods are safe for concurrent use.
type Handle struct {
	name string
	mu   sync.RWMutex // guards fd: dials hold it shared, Close exclusively
	fd   int          // -1 once closed
}

// Open opens a network namespace by name (under /var/run/netns) or by path.
func Open(nameOrPath string) (*Handle, error) {
	path := nameOrPath
	if !filepath.IsAbs(path) {
		path = filepath.Join("/var/run/netns", nameOrPath)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns: opening %s: %w", path, err)
	}
	return &Handle{name: filepath.Base(path), fd: fd}, nil
}

// Name is the namespace's file name.
func (h *Handle) Name() string { return h.name }

// Close releases the handle. Connections opened through it stay open.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return nil
	}
	err := unix.Close(h.fd)
	h.fd = -1
	return err
}

// DialContext opens a connection from inside the namespace, so that the
// peer sees the namespace's address as the source. Use it as an
// http.Transport's DialContext to make Go clients behave like a process in
// the pod. Only literal IP addresses are dialled: a name would be resolved
// with the host's resolver, which is not what a pod would see.
func (h *Handle) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("netns %s: dialing %s: %w", h.name, addr, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("netns %s: dialing %s: only IP addresses are supported: %w", h.name, addr, err)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	// A fresh goroutine owns the switched thread, so the caller's goroutine
	// is never locked and a thread whose namespace cannot be restored dies
	// with the goroutine (the runtime terminates threads that exit locked).
	go func() {
		runtime.LockOSThread()
		conn, restored, err := h.dialLocked(ctx, network, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- result{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

// dialLocked must run on a locked OS thread. restored reports whether the
// thread is back in its original namespace and may be reused.
func (h *Handle) dialLocked(ctx context.Context, network, addr string) (conn net.Conn, restored bool, err error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.fd < 0 {
		return nil, true, fmt.Errorf("netns %s: closed", h.name)
	}
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, fmt.Errorf("netns %s: opening own namespace: %w", h.name, err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(h.fd, unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("netns %s: entering: %w", h.name, err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, network, addr)
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, false, fmt.Errorf("netns %s: returning to own namespace: %w", h.name, err)
	}
	if dialErr != nil {
		return nil, true, fmt.Errorf("netns %s: %w", h.name, dialErr)
	}
	return conn, true, nil
}
