package guard

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// ConnLimiter counts open connections per source address across all the
// listeners it wraps (the IPv4 and the IPv6 credential address share one
// count per pod address). Its table holds an entry only while the address
// has a connection open, so its size is bounded by the open connections,
// which the limit itself bounds per address.
type ConnLimiter struct {
	max int
	m   *Metrics

	mu    sync.Mutex
	conns map[netip.Addr]int // owned by mu
}

// NewConnLimiter allows up to maxPerAddr open connections per source
// address (DefaultMaxConnsPerAddr when 0).
func NewConnLimiter(maxPerAddr int, m *Metrics) (*ConnLimiter, error) {
	switch {
	case m == nil:
		return nil, errNoMetrics
	case maxPerAddr < 0:
		return nil, errors.New("guard: negative connection limit")
	case maxPerAddr == 0:
		maxPerAddr = DefaultMaxConnsPerAddr
	}
	return &ConnLimiter{max: maxPerAddr, m: m, conns: map[netip.Addr]int{}}, nil
}

// Listener wraps ln: a connection beyond the limit for its source address
// is closed as soon as it is accepted, before the HTTP server allocates
// anything for it, and Accept goes on to the next one. A pod that opens
// thousands of idle or half-open connections thus holds at most the limit
// (each of which the server's header and idle timeouts end), and the
// agent's memory does not grow with its attempts.
func (c *ConnLimiter) Listener(ln net.Listener) net.Listener {
	return &listener{Listener: ln, c: c}
}

// Open reports the connections open from addr, for tests and debugging.
func (c *ConnLimiter) Open(addr netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[addr.Unmap()]
}

func (c *ConnLimiter) acquire(addr netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns[addr] >= c.max {
		return false
	}
	c.conns[addr]++
	return true
}

func (c *ConnLimiter) release(addr netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.conns[addr] - 1; n > 0 {
		c.conns[addr] = n
	} else {
		delete(c.conns, addr)
	}
}

type listener struct {
	net.Listener
	c *ConnLimiter
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr, ok := sourceAddr(conn)
		if !ok {
			// Not TCP (tests over pipes): nothing to key on, and the broker
			// refuses a caller whose address it cannot read.
			return conn, nil
		}
		if !l.c.acquire(addr) {
			l.c.m.refusedConnections.Inc()
			_ = conn.Close()
			continue
		}
		l.c.m.openConnections.Inc()
		return &limitedConn{Conn: conn, c: l.c, addr: addr}, nil
	}
}

func sourceAddr(conn net.Conn) (netip.Addr, bool) {
	switch a := conn.RemoteAddr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), ap.Addr().IsValid()
	default:
		return netip.Addr{}, false
	}
}

// limitedConn gives its slot back exactly once, however often it is closed.
type limitedConn struct {
	net.Conn
	c      *ConnLimiter
	addr   netip.Addr
	closed atomic.Bool
}

func (c *limitedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.c.release(c.addr)
		c.c.m.openConnections.Dec()
	}
	return c.Conn.Close()
}

// CloseWrite keeps net/http's graceful close: after an error answer such as
// 431 the server half-closes and drains, so the client reads the answer
// instead of a reset. Embedding net.Conn alone would hide it.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
