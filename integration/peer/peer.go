// Package peer is the base the verifying test peers (integration/oidcsts,
// integration/googlests, integration/entra) stand on: a listener that a
// fault can take off the network and put back on the same address, the
// connection reset and latency of injected faults, the pod-binding lookup,
// the record of secrets and per-pod calls, and random token text. Each
// peer keeps its own wire format, error shapes and exported API; only what
// was the same in all of them lives here.
package peer

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// ErrPodNotFound is what a PodUIDFunc returns when the pod does not exist.
var ErrPodNotFound = errors.New("peer: pod not found")

// PodUIDFunc returns the UID of the pod namespace/name, or ErrPodNotFound.
type PodUIDFunc func(ctx context.Context, namespace, name string) (string, error)

// Listener serves a handler on one address. Refusing closes the listener
// and every open connection; serving again listens on the same address, so
// that a client configured with the URL reaches the peer again. Its
// methods are safe for concurrent use.
type Listener struct {
	name string // prefixes errors: the peer's package name

	mu        sync.Mutex
	handler   http.Handler
	addr      string
	srv       *http.Server
	listening bool
}

// NewListener returns a Listener that is not listening yet; name prefixes
// its errors.
func NewListener(name string) *Listener { return &Listener{name: name} }

// Start listens on addr (host:port; port 0 picks one) and serves h in the
// background until Close.
func (l *Listener) Start(addr string, h http.Handler) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.listening {
		return fmt.Errorf("%s: already started", l.name)
	}
	l.handler = h
	return l.listenLocked(addr)
}

func (l *Listener) listenLocked(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: listening on %s: %w", l.name, addr, err)
	}
	l.addr = ln.Addr().String()
	l.srv = &http.Server{Handler: l.handler, ReadHeaderTimeout: 10 * time.Second}
	l.listening = true
	go l.srv.Serve(ln) //nolint:errcheck // returns ErrServerClosed on Close
	return nil
}

// Addr returns host:port of the listener, also while refusing.
func (l *Listener) Addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// Close stops serving and closes all connections.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.listening {
		return nil
	}
	l.listening = false
	return l.srv.Close()
}

// Refuse takes the peer off the network (refuse) or, once started, puts it
// back on the same address (!refuse).
func (l *Listener) Refuse(refuse bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case refuse && l.listening:
		l.listening = false
		return l.srv.Close()
	case !refuse && !l.listening && l.srv != nil:
		return l.listenLocked(l.addr)
	}
	return nil
}

// ResetConnection closes the request's connection with SO_LINGER 0, so the
// client reads a TCP RST instead of an answer.
func ResetConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// Delay waits d, cut short when ctx ends (the client gave up); it reports
// whether d passed.
func Delay(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// Record keeps every secret a peer received or issued, so that tests can
// prove none shows up where it must not (the agent's logs and metrics), and
// counts calls per pod UID. Its methods are safe for concurrent use.
type Record struct {
	mu       sync.Mutex
	secrets  []string
	podCalls map[string]int64
}

// Secret records secrets; empty ones are skipped.
func (r *Record) Secret(secrets ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range secrets {
		if s != "" {
			r.secrets = append(r.secrets, s)
		}
	}
}

// Secrets returns every secret recorded so far.
func (r *Record) Secrets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.secrets)
}

// PodCall counts one call for the pod with this UID.
func (r *Record) PodCall(podUID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.podCalls == nil {
		r.podCalls = make(map[string]int64)
	}
	r.podCalls[podUID]++
}

// PodCalls returns how many calls were counted for the pod with this UID.
func (r *Record) PodCalls(podUID string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.podCalls[podUID]
}

// RandomString returns n characters drawn from alphabet by crypto/rand.
func RandomString(n int, alphabet string) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// Inject answers a call as an injected fault says, in the peers' order: a
// reset connection; else latency (when the client gives up first, the call
// ends unanswered); else, for a non-zero status, the peer's own error for
// it (writeStatus). faulted is told of every reset and faulted status (the
// peer counts and logs it). Inject reports whether the call is over.
func Inject(w http.ResponseWriter, r *http.Request, reset bool, latency time.Duration, status int,
	faulted func(what any), writeStatus func(status int)) bool {
	if reset {
		faulted("connection reset")
		ResetConnection(w)
		return true
	}
	if !Delay(r.Context(), latency) {
		return true
	}
	if status != 0 {
		faulted(status)
		writeStatus(status)
		return true
	}
	return false
}
