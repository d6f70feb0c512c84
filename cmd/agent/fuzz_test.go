package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/api/awscreds"
)

// FuzzRequestPath feeds arbitrary bytes to the real request path (the
// connection limit, the guard, the broker behind the credential server's
// settings) as one connection from a chosen pod, and checks what comes back:
//
//   - no panic (the HTTP server would swallow a handler's panic, so the
//     handler is wrapped to record one);
//   - the output is a sequence of well-formed HTTP responses, then the
//     connection is closed;
//   - a 200 with credentials only for a request that should be served (an
//     oracle parses the same bytes with net/http's request parser) and only
//     with the connecting pod's own credentials;
//   - no secret in any error answer or log line.
//
// The per-pod rate limit is lifted here so that inputs exercise the path
// behind it; TestRequestRatePerPod covers the limit itself.
func FuzzRequestPath(f *testing.F) {
	for _, c := range hostileCases() {
		f.Add([]byte(c.raw), byte(0))
	}
	f.Add([]byte(req("GET", "/v1/credentials")+req("HEAD", "/v1/credentials")+req("GET", "/v1/credentials", "Via: x")), byte(0))
	f.Add([]byte(req("GET", "/v1/credentials")), byte(1))
	f.Add([]byte(req("GET", "/v1/credentials", "Authorization: x")), byte(4))
	f.Add([]byte(req("GET", "/v1/credentials")), byte(4)) // must be 401

	h := newFuzzHarness(f)
	f.Fuzz(func(t *testing.T, input []byte, mode byte) {
		h.run(t, input, mode)
	})
}

type fuzzHarness struct {
	open, authz *fuzzServer
}

type fuzzServer struct {
	s        *testStack
	ln       *chanListener
	authz    bool
	mu       sync.Mutex
	panicked any
}

func newFuzzHarness(f *testing.F) *fuzzHarness {
	start := func(authz bool) *fuzzServer {
		s := newStack(f, func(c *guardConfig) {
			c.requestQPS, c.requestBurst = 1e9, 1e9
			c.requireAuthorization = authz
		})
		fs := &fuzzServer{s: s, authz: authz, ln: newChanListener()}
		inner := s.srv.Handler
		s.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if p := recover(); p != nil {
					fs.mu.Lock()
					fs.panicked = p
					fs.mu.Unlock()
					panic(p)
				}
			}()
			inner.ServeHTTP(w, r)
		})
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = s.srv.Serve(s.grd.listener(fs.ln))
		}()
		f.Cleanup(func() { fs.ln.Close(); <-served })
		return fs
	}
	return &fuzzHarness{open: start(false), authz: start(true)}
}

// Source pods a fuzz input may come from, by mode.
var fuzzSources = []string{podApp, podDefault, "127.0.0.9" /* no pod */}

func (h *fuzzHarness) run(t *testing.T, input []byte, mode byte) {
	srv := h.open
	if mode&4 != 0 {
		srv = h.authz
	}
	from := fuzzSources[int(mode&3)%len(fuzzSources)]
	conn := newMemConn(input, from)
	srv.ln.conns <- conn
	select {
	case <-conn.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the server neither answered nor closed the connection")
	}
	srv.mu.Lock()
	p := srv.panicked
	srv.mu.Unlock()
	if p != nil {
		t.Fatalf("handler panicked: %v", p)
	}

	// The oracle: what net/http's parser makes of the same bytes.
	var want []*http.Request
	in := bufio.NewReader(bytes.NewReader(input))
	for {
		r, err := http.ReadRequest(in)
		if err != nil {
			break
		}
		_, _ = io.Copy(io.Discard, r.Body)
		want = append(want, r)
	}

	out := bufio.NewReader(bytes.NewReader(conn.written()))
	for i := 0; ; i++ {
		if _, err := out.Peek(1); errors.Is(err, io.EOF) {
			break
		}
		method := http.MethodGet
		if i < len(want) {
			method = want[i].Method
		}
		a, err := parseAnswer(t, out, method)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if a.close {
			// The last answer. net/http's own error answers (400, 431,
			// 505) carry a body even to a HEAD, which a HEAD-aware parse
			// leaves unread; nothing else may follow.
			if rest, _ := io.ReadAll(out); len(rest) > 0 && (method != http.MethodHead || a.status == http.StatusOK) {
				t.Fatalf("%d bytes after the closing answer %d: %q", len(rest), i, rest)
			}
			out = bufio.NewReader(bytes.NewReader(nil))
		}
		if a.status != http.StatusOK || method != http.MethodGet {
			continue
		}
		switch {
		case i >= len(want):
			t.Fatalf("answer %d is 200 with credentials for bytes net/http does not parse as a request", i)
		case srv.refuses(want[i], from):
			t.Fatalf("answer %d is 200 with credentials for a request that must be refused: %s %q %v", i, want[i].Method, want[i].RequestURI, want[i].Header)
		case a.key != keyOf(from):
			t.Fatalf("answer %d carries %s's credentials to %s", i, a.key, from)
		}
	}
	logs := srv.s.logs.String()
	for _, m := range secretMarkers {
		if strings.Contains(logs, m) {
			t.Fatalf("a secret (%s...) in the logs", m)
		}
	}
}

// refuses says whether the agent must not serve credentials for r.
func (s *fuzzServer) refuses(r *http.Request, from string) bool {
	if from != podApp {
		return true
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return true
	}
	if r.URL.Path != awscreds.Path || r.URL.RawPath != "" {
		return true
	}
	for _, k := range []string{"X-Forwarded-For", "Forwarded", "Via", "X-Real-Ip", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if _, ok := r.Header[k]; ok {
			return true
		}
	}
	return s.authz && r.Header.Get("Authorization") == ""
}

// chanListener hands the server connections a test pushes.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(169, 254, 170, 23), Port: 80}
}

// memConn is one connection in memory: the server reads the input, then
// EOF, as if the client had sent it and half-closed; what the server writes
// is kept. Its remote address is the chosen pod's, as a TCP address, so the
// connection limit and the broker see a pod.
type memConn struct {
	r      *bytes.Reader
	from   *net.TCPAddr
	mu     sync.Mutex
	out    bytes.Buffer
	once   sync.Once
	closed chan struct{}
}

func newMemConn(input []byte, from string) *memConn {
	return &memConn{r: bytes.NewReader(input), from: &net.TCPAddr{IP: net.ParseIP(from), Port: 40000},
		closed: make(chan struct{})}
}

func (c *memConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}
func (c *memConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}
func (c *memConn) Close() error { c.once.Do(func() { close(c.closed) }); return nil }
func (c *memConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(169, 254, 170, 23), Port: 80}
}
func (c *memConn) RemoteAddr() net.Addr             { return c.from }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
