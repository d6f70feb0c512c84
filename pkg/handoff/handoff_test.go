package handoff

import (
	"bytes"
	"context"

	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// The helper modes run this test binary as another process, under another
// UID: a forged peer.
func TestMain(m *testing.M) {
	switch os.Getenv("HANDOFF_HELPER") {
	case "client":
		// Connect and report how many bytes the agent wrote.
		c, err := net.Dial("unix", os.Getenv("HANDOFF_PATH"))
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(2)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, c)
		fmt.Printf("read %d bytes, err %v\n", n, err)
		os.Exit(0)
	case "server":
		// Serve a well-formed hand-off of one entry, then wait to be killed.
		path := os.Getenv("HANDOFF_PATH")
		ln, err := Listen(ServerConfig{Path: path, Source: staticSource{entry(1)}})
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(2)
		}
		fmt.Println("listening")
		_ = ln.Serve(context.Background())
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const nobody = 65534

var t0 = time.Now()

func entry(i int) broker.Carried {
	return broker.Carried{
		PodUID: types.UID(fmt.Sprint("uid-", i)), Namespace: "shop", ServiceAccount: "cart",
		Request:  broker.Request{Cloud: exchange.AWS, Want: exchange.KindAWS},
		Identity: "arn:aws:iam::111122223333:role/reader",
		Credentials: exchange.Credentials{Kind: exchange.KindAWS, AccessKeyID: fmt.Sprint("ASIA-", i),
			SecretAccessKey: exchange.Secret(fmt.Sprint("SECRETKEY-", i)), SessionToken: exchange.Secret(fmt.Sprint("SESSIONTOKEN-", i)),
			AccountID: "111122223333", Expiration: t0.Add(time.Hour).UTC()},
	}
}

type staticSource []broker.Carried

func (s staticSource) Export() []broker.Carried { return s }

// sink takes every entry except those refuse names, and records the taken.
type sink struct {
	mu     sync.Mutex
	taken  []broker.Carried
	refuse map[string]string // pod UID -> reason
}

func (s *sink) Import(c broker.Carried) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reason, ok := s.refuse[string(c.PodUID)]; ok {
		return &broker.ImportRefusal{Reason: reason}
	}
	s.taken = append(s.taken, c)
	return nil
}

// noSecrets fails if a secret the tests minted is in the logs or metrics.
func noSecrets(t *testing.T, logs *testfake.Buffer, reg *prometheus.Registry) {
	t.Helper()
	hay := logs.String()
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		hay += mf.String()
	}
	for _, marker := range []string{"SECRETKEY-", "SESSIONTOKEN-"} {
		if strings.Contains(hay, marker) {
			t.Errorf("a secret (%s...) reached a log line or a metric", marker)
		}
	}
}

type fixture struct {
	dir, path string
	logs      *testfake.Buffer
	reg       *prometheus.Registry
	m         *Metrics
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), logs: &testfake.Buffer{}, reg: prometheus.NewRegistry()}
	f.path = filepath.Join(f.dir, "handoff.sock")
	f.m = NewMetrics(f.reg)
	t.Cleanup(func() { noSecrets(t, f.logs, f.reg) })
	return f
}

func (f *fixture) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(f.logs, nil)) }

// serve starts a sender of src at f.path until the test ends.
func (f *fixture) serve(t *testing.T, src Source) *Listener {
	t.Helper()
	ln, err := Listen(ServerConfig{Path: f.path, Source: src, Metrics: f.m, Logger: f.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- ln.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln
}

func (f *fixture) receive(s Sink, mutate func(*ReceiveConfig)) Result {
	cfg := ReceiveConfig{Path: f.path, Sink: s, Metrics: f.m, Logger: f.logger(), Timeout: 5 * time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	return Receive(context.Background(), cfg)
}

func TestHandOffCarriesEveryEntry(t *testing.T) {
	f := newFixture(t)
	src := staticSource{entry(1), entry(2), entry(3)}
	src[2].Request = broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: "a b"}
	src[2].Credentials = exchange.Credentials{Kind: exchange.KindAccessToken, AccessToken: "SECRETKEY-gcp", TokenType: "Bearer",
		Scopes: []string{"a", "b"}, Expiration: t0.Add(time.Hour).UTC()}
	f.serve(t, src)
	s := &sink{refuse: map[string]string{"uid-2": broker.ImportPolicy}}
	r := f.receive(s, nil)
	if r.Outcome != resultComplete || r.Err != nil || r.Offered != 3 || r.Taken != 2 || r.Refused[broker.ImportPolicy] != 1 {
		t.Fatalf("result %+v", r)
	}
	for i, want := range []broker.Carried{src[0], src[2]} {
		got := s.taken[i]
		if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", want) || got.Credentials.SecretAccessKey.Reveal() != want.Credentials.SecretAccessKey.Reveal() ||
			got.Credentials.SessionToken.Reveal() != want.Credentials.SessionToken.Reveal() || got.Credentials.AccessToken.Reveal() != want.Credentials.AccessToken.Reveal() {
			t.Errorf("entry %d: got %#v, want %#v", i, got, want)
		}
	}
	if v := testutil.ToFloat64(f.m.entries.WithLabelValues(entryTaken)); v != 2 {
		t.Errorf("taken counted %v", v)
	}
	if v := testutil.ToFloat64(f.m.entries.WithLabelValues(broker.ImportPolicy)); v != 1 {
		t.Errorf("refused by policy counted %v", v)
	}
	// The sender counts after its last write, which may be after the
	// receiver has read it.
	testfake.Eventually(t, "the sender to count 3 entries", func() bool { return testutil.ToFloat64(f.m.sentN) == 3 })
	if !strings.Contains(f.logs.String(), `"taken":2`) {
		t.Errorf("no log line with the counts: %s", f.logs.String())
	}
}

// SO_PEERCRED on a real socket pair names this process's UID.
func TestPeerUIDIsTheKernels(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns []*net.UnixConn
	for _, fd := range fds {
		file := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(file)
		file.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c.(*net.UnixConn))
	}
	uid, err := PeerUID(conns[0])
	if err != nil || uid != uint32(os.Geteuid()) {
		t.Fatalf("PeerUID = %d, %v; want %d", uid, err, os.Geteuid())
	}
	if err := checkPeer(conns[0], uid+1); !errors.Is(err, ErrPeerUID) {
		t.Errorf("checkPeer against another UID: %v", err)
	}
}

// asNobody runs this test binary in a helper mode under UID 65534.
func asNobody(t *testing.T, mode, path string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a peer under another UID")
	}
	// The test binary sits in a directory only root may enter: copy it
	// where the other UID can execute it.
	dir, err := os.MkdirTemp("", "handoff-peer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "handoff.test")
	data, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(bin, data, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "HANDOFF_HELPER="+mode, "HANDOFF_PATH="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	return cmd
}

// A forged peer under another UID gets not a byte, even with the file
// mode opened to it: SO_PEERCRED is checked, not only the path's mode.
func TestPeerOfAnotherUIDGetsNothing(t *testing.T) {
	f := newFixture(t)
	openDir(t, f.dir)
	f.serve(t, staticSource{entry(1)})
	if err := os.Chmod(f.path, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err := asNobody(t, "client", f.path).CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	if !strings.HasPrefix(string(out), "read 0 bytes") {
		t.Fatalf("the peer of UID %d got: %s", nobody, out)
	}
	testfake.Eventually(t, "the refusal to be counted", func() bool { return testutil.ToFloat64(f.m.sent.WithLabelValues(resultPeerRefused)) == 1 })
	// The same socket answers this agent's own UID.
	if r := f.receive(&sink{}, nil); r.Taken != 1 {
		t.Errorf("own UID: %+v", r)
	}
}

// A sender under another UID is not believed: nothing it sends is taken.
func TestSenderOfAnotherUIDIsNotBelieved(t *testing.T) {
	f := newFixture(t)
	openDir(t, f.dir)
	cmd := asNobody(t, "server", f.path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make([]byte, 64)
	n, _ := stdout.Read(line)
	if !strings.HasPrefix(string(line[:n]), "listening") {
		t.Fatalf("helper: %s", line[:n])
	}
	// The helper's socket is 0600 and its own; root connects regardless
	// (no file mode keeps root out), which is what is tested here.
	s := &sink{}
	r := f.receive(s, nil)
	if r.Outcome != resultPeerRefused || !errors.Is(r.Err, ErrPeerUID) || len(s.taken) != 0 {
		t.Fatalf("from a sender of UID %d: %+v, took %d", nobody, r, len(s.taken))
	}
}

// openDir lets every UID into dir (and its parent, t.TempDir's).
func openDir(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
}

// rawServer serves frames a test writes by hand, once.
func rawServer(t *testing.T, path string, write func(w io.Writer)) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		write(c)
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// frame writes v; a receiver that stops reading early (a bound) makes
// the write fail, which is no test failure.
func frame(_ *testing.T, w io.Writer, v any) { _ = writeFrame(w, v) }

func rawFrame(w io.Writer, body []byte) {
	_, _ = w.Write([]byte{byte(len(body) >> 24), byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))})
	_, _ = w.Write(body)
}

func TestMalformedAndPartialStreams(t *testing.T) {
	good := func(i int) wireEntry { return toWire(entry(i)) }
	cases := []struct {
		name    string
		write   func(t *testing.T, w io.Writer)
		mutate  func(*ReceiveConfig)
		outcome string
		taken   int
		refused map[string]int
	}{
		{name: "an undecodable entry among good ones", outcome: resultComplete, taken: 2, refused: map[string]int{entryUndecoded: 2},
			write: func(t *testing.T, w io.Writer) {
				frame(t, w, hello{V: 1, Entries: 4})
				frame(t, w, good(1))
				rawFrame(w, []byte(`{"pod_uid": "uid-2", "secret_access_key": "SECRETKEY-2`))
				rawFrame(w, []byte(`[1,2,3]`))
				frame(t, w, good(3))
				frame(t, w, nil)
			}},
		{name: "cut short after two entries", outcome: resultPartial, taken: 2,
			write: func(t *testing.T, w io.Writer) {
				frame(t, w, hello{V: 1, Entries: 5})
				frame(t, w, good(1))
				frame(t, w, good(2))
				_, _ = w.Write([]byte{0, 0, 1, 0, '{', '"'})
			}},
		{name: "an entry over the size bound ends the stream", outcome: resultPartial, taken: 1,
			mutate: func(c *ReceiveConfig) { c.MaxEntryBytes = 1024 },
			write: func(t *testing.T, w io.Writer) {
				frame(t, w, hello{V: 1, Entries: 3})
				frame(t, w, good(1))
				big := good(2)
				big.Scope = strings.Repeat("x", 2048)
				frame(t, w, big)
				frame(t, w, good(3))
				frame(t, w, nil)
			}},
		{name: "more entries than the bound", outcome: resultPartial, taken: 2, refused: map[string]int{entryOverLimit: 2},
			mutate: func(c *ReceiveConfig) { c.MaxEntries = 2 },
			write: func(t *testing.T, w io.Writer) {
				frame(t, w, hello{V: 1, Entries: 4})
				for i := range 4 {
					frame(t, w, good(i))
				}
				frame(t, w, nil)
			}},
		{name: "a stream over the byte bound", outcome: resultPartial, taken: 1,
			mutate: func(c *ReceiveConfig) {
				var h, e bytes.Buffer
				_ = writeFrame(&h, hello{V: 1, Entries: 3})
				_ = writeFrame(&e, toWire(entry(0)))
				c.MaxBytes = int64(h.Len() + e.Len() + e.Len()/2)
			},
			write: func(t *testing.T, w io.Writer) {
				frame(t, w, hello{V: 1, Entries: 3})
				for i := range 3 {
					frame(t, w, good(i))
				}
				frame(t, w, nil)
			}},
		{name: "another wire version", outcome: resultFailed,
			write: func(t *testing.T, w io.Writer) {
				frame(t, w, hello{V: 2, Entries: 1})
				frame(t, w, good(1))
				frame(t, w, nil)
			}},
		{name: "garbage instead of a hello", outcome: resultFailed,
			write: func(t *testing.T, w io.Writer) { _, _ = w.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")) }},
		{name: "closed at once", outcome: resultFailed, write: func(t *testing.T, w io.Writer) {}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			rawServer(t, f.path, func(w io.Writer) { tc.write(t, w) })
			s := &sink{}
			r := f.receive(s, tc.mutate)
			if r.Outcome != tc.outcome || r.Taken != tc.taken || len(s.taken) != tc.taken {
				t.Fatalf("result %+v, took %d; want %s with %d taken", r, len(s.taken), tc.outcome, tc.taken)
			}
			for reason, n := range tc.refused {
				if r.Refused[reason] != n {
					t.Errorf("refused %s: %d, want %d", reason, r.Refused[reason], n)
				}
			}
			if (r.Err == nil) != (tc.outcome == resultComplete) {
				t.Errorf("error %v with outcome %s", r.Err, r.Outcome)
			}
		})
	}
}

// A predecessor that accepts and never answers costs the deadline, no more.
func TestStalledPredecessorCostsTheDeadline(t *testing.T) {
	f := newFixture(t)
	release := make(chan struct{})
	rawServer(t, f.path, func(io.Writer) { <-release })
	defer close(release)
	start := time.Now()
	r := f.receive(&sink{}, func(c *ReceiveConfig) { c.Timeout = 300 * time.Millisecond })
	if r.Outcome != resultFailed || r.Taken != 0 {
		t.Fatalf("result %+v", r)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v with a 300ms deadline", took)
	}
}

func TestNoPredecessor(t *testing.T) {
	f := newFixture(t)
	if r := f.receive(&sink{}, nil); r.Outcome != resultNone || !errors.Is(r.Err, ErrNoPredecessor) {
		t.Fatalf("no socket: %+v", r)
	}
	// A socket left behind by a predecessor that died without cleaning up.
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if r := f.receive(&sink{}, nil); r.Outcome != resultNone {
		t.Fatalf("a dead socket: %+v", r)
	}
}

// The successor's Listen takes the path over; the predecessor, stopping,
// leaves it alone.
func TestSuccessorTakesThePathOver(t *testing.T) {
	f := newFixture(t)
	old, err := Listen(ServerConfig{Path: f.path, Source: staticSource{entry(1)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- old.Serve(ctx) }()
	if r := f.receive(&sink{}, nil); r.Taken != 1 {
		t.Fatalf("from the predecessor: %+v", r)
	}
	f.serve(t, staticSource{entry(7), entry(8)})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := f.receive(&sink{}, nil); r.Taken != 2 {
		t.Fatalf("after the predecessor stopped, the path serves %+v; want the successor's 2 entries", r)
	}
	if m, _ := filepath.Glob(f.path + ".*"); len(m) != 0 {
		t.Errorf("temporary sockets left: %v", m)
	}
	fi, err := os.Stat(f.path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
}
