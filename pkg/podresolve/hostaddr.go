package podresolve

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// hostAddrsMinAge bounds how often a Resolve miss may re-read the
	// node's addresses: misses can be caused by any caller, and
	// interfaces change rarely.
	hostAddrsMinAge = time.Second
	// hostAddrsInterval is how often Run re-reads them regardless, so an
	// address that left the node stops being refused.
	hostAddrsInterval = time.Minute
)

// hostAddrs caches the node's own addresses. Reads are lock-free.
type hostAddrs struct {
	read func() ([]netip.Addr, error)
	log  *slog.Logger
	// minAge is hostAddrsMinAge; tests lower it.
	minAge time.Duration

	set atomic.Pointer[hostAddrSet]
	mu  sync.Mutex // serialises refreshes
}

type hostAddrSet struct {
	addrs map[netip.Addr]struct{}
	at    time.Time
}

// has reports whether ip is one of the node's addresses as last read.
// Loopback and unspecified addresses always belong to the node.
func (h *hostAddrs) has(ip netip.Addr) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	s := h.set.Load()
	if s == nil {
		return false
	}
	_, ok := s.addrs[ip]
	return ok
}

// hasFresh is has after re-reading the addresses if the last read is older
// than minAge, so a newly added node address is recognised on its
// first use.
func (h *hostAddrs) hasFresh(ip netip.Addr) bool {
	if h.has(ip) {
		return true
	}
	if s := h.set.Load(); s != nil && time.Since(s.at) < h.minAge {
		return false
	}
	h.refresh(h.minAge)
	return h.has(ip)
}

// refresh re-reads the addresses unless another caller did so within
// maxAge. On error the previous set is kept (and its age reset, so a
// failing source is not hammered).
func (h *hostAddrs) refresh(maxAge time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	prev := h.set.Load()
	if prev != nil && time.Since(prev.at) < maxAge {
		return
	}
	addrs, err := h.read()
	now := time.Now()
	if err != nil {
		h.log.Warn("reading the node's addresses failed; keeping the previous list", logKeyError, err)
		next := &hostAddrSet{at: now}
		if prev != nil {
			next.addrs = prev.addrs
		}
		h.set.Store(next)
		return
	}
	next := &hostAddrSet{addrs: make(map[netip.Addr]struct{}, len(addrs)), at: now}
	for _, a := range addrs {
		next.addrs[a.Unmap().WithZone("")] = struct{}{}
	}
	h.set.Store(next)
}

// run refreshes the addresses every hostAddrsInterval until ctx is done.
func (h *hostAddrs) run(ctx context.Context) {
	t := time.NewTicker(hostAddrsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.refresh(hostAddrsInterval / 2)
		}
	}
}

// InterfaceAddrs returns the addresses of this machine's network
// interfaces. It is the default Config.HostAddrs: the agent runs with host
// networking, so these are the node's addresses.
func InterfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing interface addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		default:
			continue
		}
		if addr, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, addr.Unmap())
		}
	}
	return out, nil
}
