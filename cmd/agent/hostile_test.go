package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
)

// Every row of the "Hostile input" table in docs/security.md is a case
// here, driven over raw TCP against the real request path.

func req(method, target string, headers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: 169.254.170.23\r\nUser-Agent: aws-sdk-go-v2\r\n", method, target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.String()
}

type hostileCase struct {
	name   string
	from   string
	method string // for parsing the answer; GET when empty
	raw    string
	status int
	code   string // error code, or "" for a non-JSON answer
	// key is whose credentials a 200 must carry (the connecting pod's).
	key string
}

func hostileCases() []hostileCase {
	long := "/v1/credentials/" + strings.Repeat("a", 6<<10)
	cases := []hostileCase{
		{name: "baseline", raw: req("GET", "/v1/credentials"), status: 200, key: keyOf(podApp)},
		// Paths: exactly one spelling is served.
		{name: "path //", raw: req("GET", "//v1/credentials"), status: 404, code: "NotFound"},
		{name: "path trailing slash", raw: req("GET", "/v1/credentials/"), status: 404, code: "NotFound"},
		{name: "path case", raw: req("GET", "/V1/Credentials"), status: 404, code: "NotFound"},
		{name: "path %2F", raw: req("GET", "/v1%2Fcredentials"), status: 404, code: "NotFound"},
		{name: "path %2f lower", raw: req("GET", "/v1%2fcredentials"), status: 404, code: "NotFound"},
		{name: "path escaped letter", raw: req("GET", "/v1/cred%65ntials"), status: 404, code: "NotFound"},
		{name: "path %5C", raw: req("GET", "/v1%5Ccredentials"), status: 404, code: "NotFound"},
		{name: "path backslash", raw: req("GET", `/v1\credentials`), status: 404, code: "NotFound"},
		{name: "path leading backslash", raw: req("GET", `\v1\credentials`), status: 400},
		{name: "path ..", raw: req("GET", "/v1/../v1/credentials"), status: 404, code: "NotFound"},
		{name: "path %2e%2e", raw: req("GET", "/v1/%2e%2e/v1/credentials"), status: 404, code: "NotFound"},
		{name: "path .", raw: req("GET", "/v1/./credentials"), status: 404, code: "NotFound"},
		{name: "path NUL", raw: req("GET", "/v1/credentials%00"), status: 404, code: "NotFound"},
		{name: "path 6 KiB", raw: req("GET", long), status: 404, code: "NotFound"},
		{name: "path 16 KiB", raw: req("GET", "/"+strings.Repeat("a", 16<<10)), status: 431},
		{name: "query ignored", raw: req("GET", "/v1/credentials?role=arn:aws:iam::111122223333:role/web&pod=web"), status: 200, key: keyOf(podApp)},
		{name: "absolute-form target", raw: req("GET", "http://169.254.170.23/v1/credentials"), status: 200, key: keyOf(podApp)},
		{name: "fragment", raw: req("GET", "/v1/credentials#x"), status: 404, code: "NotFound"},
		// Methods.
		{name: "HEAD", method: "HEAD", raw: req("HEAD", "/v1/credentials"), status: 200},
		{name: "POST", raw: req("POST", "/v1/credentials", "Content-Length: 0"), status: 405, code: "MethodNotAllowed"},
		{name: "PUT", raw: req("PUT", "/v1/credentials", "Content-Length: 0"), status: 405, code: "MethodNotAllowed"},
		{name: "DELETE", raw: req("DELETE", "/v1/credentials"), status: 405, code: "MethodNotAllowed"},
		{name: "OPTIONS", raw: req("OPTIONS", "/v1/credentials"), status: 405, code: "MethodNotAllowed"},
		{name: "TRACE", raw: req("TRACE", "/v1/credentials"), status: 405, code: "MethodNotAllowed"},
		{name: "lower-case get", raw: req("get", "/v1/credentials"), status: 405, code: "MethodNotAllowed"},
		{name: "unknown method", raw: req("FETCH", "/v1/credentials"), status: 405, code: "MethodNotAllowed"},
		{name: "CONNECT", raw: req("CONNECT", "169.254.170.23:80"), status: 404, code: "NotFound"},
		{name: "method with a control byte", raw: req("G\x01T", "/v1/credentials"), status: 400},
		// Spoofing and forwarding headers: a proxy's request is refused;
		// nothing a caller sends changes whose credentials it gets.
		{name: "X-Forwarded-For", from: podDefault, raw: req("GET", "/v1/credentials", "X-Forwarded-For: "+podApp), status: 400, code: "ForwardedRequest"},
		{name: "Forwarded", from: podDefault, raw: req("GET", "/v1/credentials", "Forwarded: for="+podApp), status: 400, code: "ForwardedRequest"},
		{name: "Via", raw: req("GET", "/v1/credentials", "Via: 1.1 egress-proxy"), status: 400, code: "ForwardedRequest"},
		{name: "X-Real-IP", from: podDefault, raw: req("GET", "/v1/credentials", "X-Real-IP: "+podApp), status: 400, code: "ForwardedRequest"},
		{name: "X-Forwarded-Host", raw: req("GET", "/v1/credentials", "X-Forwarded-Host: x"), status: 400, code: "ForwardedRequest"},
		{name: "X-Forwarded-For lower case", raw: req("GET", "/v1/credentials", "x-forwarded-for: 10.0.0.1"), status: 400, code: "ForwardedRequest"},
		{name: "Host of another service", raw: strings.Replace(req("GET", "/v1/credentials"), "Host: 169.254.170.23", "Host: 169.254.169.254", 1), status: 200, key: keyOf(podApp)},
		{name: "two Host headers", raw: req("GET", "/v1/credentials", "Host: evil"), status: 400},
		{name: "Authorization naming another pod", raw: req("GET", "/v1/credentials", "Authorization: shop/web"), status: 200, key: keyOf(podApp)},
		{name: "refused identity stays refused", from: podDefault, raw: req("GET", "/v1/credentials"), status: 403, code: "DefaultServiceAccount"},
		// Huge headers.
		{name: "64 KiB header", raw: req("GET", "/v1/credentials", "X-Padding: "+strings.Repeat("a", 64<<10)), status: 431},
		{name: "2,000 small headers", raw: req("GET", "/v1/credentials", strings.Repeat("X-A: b\r\n", 2000)+"X-B: c"), status: 431},
		{name: "header without colon", raw: req("GET", "/v1/credentials", "Nonsense"), status: 400},
		{name: "obsolete line folding", raw: req("GET", "/v1/credentials", "X-A: b\r\n c"), status: 200, key: keyOf(podApp)},
		// Bodies on GET: ignored, never read into memory.
		{name: "GET with a body", raw: strings.Replace(req("GET", "/v1/credentials", "Content-Length: 5"), "\r\n\r\n", "\r\n\r\nhello", 1), status: 200, key: keyOf(podApp)},
		{name: "GET with a chunked body", raw: strings.Replace(req("GET", "/v1/credentials", "Transfer-Encoding: chunked"), "\r\n\r\n", "\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1), status: 200, key: keyOf(podApp)},
		{name: "GET announcing 1 GiB, sending none", raw: req("GET", "/v1/credentials", "Content-Length: 1073741824"), status: 200, key: keyOf(podApp)},
		{name: "Content-Length and Transfer-Encoding", raw: req("GET", "/v1/credentials", "Content-Length: 5", "Transfer-Encoding: chunked"), status: 200, key: keyOf(podApp)},
		{name: "two Content-Lengths", raw: req("GET", "/v1/credentials", "Content-Length: 5", "Content-Length: 6"), status: 400},
		{name: "negative Content-Length", raw: req("GET", "/v1/credentials", "Content-Length: -1"), status: 400},
		// Protocol oddities.
		{name: "HTTP/1.0 without Host", raw: "GET /v1/credentials HTTP/1.0\r\n\r\n", status: 200, key: keyOf(podApp)},
		{name: "HTTP/1.1 without Host", raw: "GET /v1/credentials HTTP/1.1\r\nConnection: close\r\n\r\n", status: 400},
		{name: "HTTP/2 preface", raw: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", status: 404, code: "NotFound"},
		{name: "TLS ClientHello", raw: "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + strings.Repeat("\x00", 32) + "\r\n\r\n", status: 400},
	}
	return cases
}

func TestHostileInput(t *testing.T) {
	s := newStack(t, nil)
	addr := s.listen()
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			from, method := c.from, c.method
			if from == "" {
				from = podApp
			}
			if method == "" {
				method = http.MethodGet
			}
			a := rawRequest(t, from, addr, method, c.raw)
			if a.status != c.status || a.code != c.code {
				t.Fatalf("status %d code %q, want %d %q; body %q", a.status, a.code, c.status, c.code, a.body)
			}
			if a.status == http.StatusOK && method == http.MethodGet && a.key != c.key {
				t.Fatalf("served %s's credentials, want %s's", a.key, c.key)
			}
			if a.status == http.StatusOK && method == http.MethodHead && a.body != "" {
				t.Fatalf("HEAD with a body: %q", a.body)
			}
			if a.status == http.StatusMethodNotAllowed && a.header.Get("Allow") != "GET, HEAD" {
				t.Fatalf("405 without Allow: %v", a.header)
			}
		})
	}
}

// The table in docs/security.md lists every case above; a case added here
// without a row there (or renamed) fails.
func TestHostileInputTableIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Hostile input")
	if !ok {
		t.Fatal("docs/security.md has no Hostile input section")
	}
	for _, c := range hostileCases() {
		if !strings.Contains(section, "| "+c.name+" |") {
			t.Errorf("docs/security.md: no row for %q", c.name)
		}
	}
}

func TestRequireAuthorization(t *testing.T) {
	s := newStack(t, func(c *guardConfig) { c.requireAuthorization = true })
	addr := s.listen()
	if a := rawRequest(t, podApp, addr, "GET", req("GET", "/v1/credentials")); a.status != 401 || a.code != "MissingAuthorization" {
		t.Fatalf("no Authorization: %d %q", a.status, a.code)
	}
	if a := rawRequest(t, podApp, addr, "GET", req("GET", "/v1/credentials", "Authorization: x")); a.status != 200 || a.key != keyOf(podApp) {
		t.Fatalf("with Authorization: %d %q", a.status, a.body)
	}
	// The forwarding check comes before it: a proxy that adds the header
	// is still refused.
	if a := rawRequest(t, podApp, addr, "GET", req("GET", "/v1/credentials", "Authorization: x", "Via: 1.1 p")); a.status != 400 {
		t.Fatalf("forwarded with Authorization: %d", a.status)
	}
	if got := s.counter("credbroker_guard_refused_requests_total", map[string]string{"reason": "unauthorized"}); got != 1 {
		t.Fatalf("unauthorized refusals counted %v", got)
	}
}

// A slowloris caller trickling its headers is cut off by the header
// timeout (2 s), and other pods are served meanwhile.
func TestSlowlorisIsCutOff(t *testing.T) {
	s := newStack(t, nil)
	addr := s.listen()
	// Before the dial: the server's header deadline starts when it accepts,
	// which can come before dial returns here.
	start := time.Now()
	slow := dial(t, podIdler, addr)
	if _, err := io.WriteString(slow, "GET /v1/credentials HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	// Keep trickling one header byte at a time, as slowloris does; the
	// writes stop mattering once the server has closed.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if _, err := slow.Write([]byte("X")); err != nil {
					return
				}
			}
		}
	})
	if a := rawRequest(t, podOther, addr, "GET", req("GET", "/v1/credentials")); a.status != 200 || a.key != keyOf(podOther) {
		t.Fatalf("another pod during slowloris: %d", a.status)
	}
	_ = slow.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err := io.ReadAll(slow)
	close(done)
	wg.Wait()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the slow connection was still open after 15 s")
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("closed after %s, before the header timeout", d)
	}
}

// A pod opening many idle connections holds at most --pod-max-connections;
// the rest are closed at accept, and other pods keep being served.
func TestManyIdleConnections(t *testing.T) {
	s := newStack(t, func(c *guardConfig) { c.maxConnsPerAddr = 16 })
	addr := s.listen()
	var kept []net.Conn
	for range 16 {
		kept = append(kept, dial(t, podIdler, addr))
	}
	// The server counts a connection when it accepts it; wait until all 16
	// are accepted, so that the next ones are certainly the excess.
	testfake.Eventually(t, "16 connections accepted", func() bool {
		return s.grd.conns.Open(mustAddr(podIdler)) == 16
	})
	for i := range 200 {
		c := dial(t, podIdler, addr)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || !(errors.Is(err, io.EOF) || isReset(err)) {
			t.Fatalf("excess connection %d not closed at accept: %d %v", i, n, err)
		}
	}
	if got := s.grd.conns.Open(mustAddr(podIdler)); got != 16 {
		t.Fatalf("%d connections open from the idler, want 16", got)
	}
	if got := s.counter("credbroker_guard_refused_connections_total", nil); got != 200 {
		t.Fatalf("refused connections counted %v, want 200", got)
	}
	if a := rawRequest(t, podApp, addr, "GET", req("GET", "/v1/credentials")); a.status != 200 {
		t.Fatalf("another pod: %d", a.status)
	}
	// The idler's kept connections still work.
	if _, err := io.WriteString(kept[0], req("GET", "/v1/credentials")); err != nil {
		t.Fatal(err)
	}
	if a, err := parseAnswer(t, bufio.NewReader(kept[0]), "GET"); err != nil || a.status != 200 || a.key != keyOf(podIdler) {
		t.Fatalf("a kept connection: %v %d", err, a.status)
	}
	for _, c := range kept {
		c.Close()
	}
	testfake.Eventually(t, "the idler's slots returned", func() bool { return s.grd.conns.Open(mustAddr(podIdler)) == 0 })
}

// A pod hammering the endpoint gets 429 with Retry-After past its burst;
// another pod does not notice.
func TestRequestRatePerPod(t *testing.T) {
	s := newStack(t, func(c *guardConfig) { c.requestQPS, c.requestBurst = 1, 10 })
	addr := s.listen()
	client := clientFrom(t, podApp)
	codes := map[int]int{}
	var retryAfter string
	for range 50 {
		resp, err := client.Get("http://" + addr + "/v1/credentials")
		if err != nil {
			t.Fatal(err)
		}
		codes[resp.StatusCode]++
		if resp.StatusCode == http.StatusTooManyRequests {
			retryAfter = resp.Header.Get("Retry-After")
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// 10 of the burst plus at most a few refilled at 1/s.
	if codes[200] < 10 || codes[200] > 15 || codes[429] < 35 || retryAfter != "1" {
		t.Fatalf("answers %v, Retry-After %q", codes, retryAfter)
	}
	if a := rawRequest(t, podOther, addr, "GET", req("GET", "/v1/credentials")); a.status != 200 {
		t.Fatalf("another pod: %d", a.status)
	}
	if got := s.counter("credbroker_guard_refused_requests_total", map[string]string{"reason": "rate_limited"}); got != float64(codes[429]) {
		t.Fatalf("rate-limited refusals counted %v, answered %d", got, codes[429])
	}
}

// A pod on the default ServiceAccount sending 1,000 requests writes a
// bounded number of log lines; the rest are counted.
func TestRefusalLogLinesPerPod(t *testing.T) {
	s := newStack(t, func(c *guardConfig) { c.requestQPS, c.requestBurst = 1e6, 1e6 })
	addr := s.listen()
	client := clientFrom(t, podDefault)
	for range 1000 {
		resp, err := client.Get("http://" + addr + "/v1/credentials")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	rawRequest(t, podOther, addr, "GET", req("GET", "/v1/credentials"))
	lines := strings.Count(s.logs.String(), `"remote_addr":"`+podDefault+`"`)
	if lines != 5 {
		t.Fatalf("%d log lines for 1,000 refusals, want the budget of 5", lines)
	}
	if got := s.counter("credbroker_log_lines_suppressed_total", nil); got != 995 {
		t.Fatalf("suppressed lines counted %v, want 995", got)
	}
}

func clientFrom(t testing.TB, from string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}
