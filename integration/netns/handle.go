package netns

import (
	"context"
	"fmt"
	"io"
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
	return h.dial(ctx, net.Dialer{}, network, addr)
}

// DialFrom is DialContext from the namespace's address local, for a
// namespace with more than one (a pod sandbox that also holds another
// pod's address), where the kernel's choice is not the one under test.
func (h *Handle) DialFrom(local netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return h.dial(ctx, net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}, network, addr)
	}
}

func (h *Handle) dial(ctx context.Context, d net.Dialer, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("netns %s: dialing %s: %w", h.name, addr, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("netns %s: dialing %s: only IP addresses are supported: %w", h.name, addr, err)
	}
	c, err := h.inside(func() (io.Closer, error) { return d.DialContext(ctx, network, addr) })
	if err != nil {
		return nil, err
	}
	return c.(net.Conn), nil
}

// Listen opens a listener inside the namespace (a server in the pod, on
// the pod's address). It serves from any thread, as a dialled socket does.
func (h *Handle) Listen(network, addr string) (net.Listener, error) {
	l, err := h.inside(func() (io.Closer, error) { return net.Listen(network, addr) })
	if err != nil {
		return nil, err
	}
	return l.(net.Listener), nil
}

// inside runs open (which makes one socket) in the namespace, on a fresh
// goroutine that owns the switched thread: the caller's goroutine is never
// locked, and a thread whose namespace cannot be restored dies with the
// goroutine (the runtime terminates threads that exit locked). When the
// thread cannot return, what open made is closed rather than handed out
// from a failed call.
func (h *Handle) inside(open func() (io.Closer, error)) (io.Closer, error) {
	type result struct {
		c   io.Closer
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		c, restored, err := h.insideLocked(open)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// insideLocked must run on a locked OS thread. restored reports whether the
// thread is back in its original namespace and may be reused.
func (h *Handle) insideLocked(open func() (io.Closer, error)) (c io.Closer, restored bool, err error) {
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
	c, openErr := open()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		if openErr == nil {
			c.Close()
		}
		return nil, false, fmt.Errorf("netns %s: returning to own namespace: %w", h.name, err)
	}
	if openErr != nil {
		return nil, true, fmt.Errorf("netns %s: %w", h.name, openErr)
	}
	return c, true, nil
}
