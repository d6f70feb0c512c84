package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
	"github.com/credbroker/agent/pkg/podresolve"
)

// The stack below is the agent's real request path: the connection limit
// around a listener, the request guard, the broker and the credential
// server's settings, with fakes only at the upstream boundaries (pod
// resolver, Kubernetes API, exchanger). Callers are told apart by their
// loopback source address, as pods are by theirs.

// Test pods, by source address.
const (
	podApp     = "127.0.0.1" // ServiceAccount with a role: gets credentials
	podOther   = "127.0.0.2" // another pod with a role: must keep being served
	podDefault = "127.0.0.3" // the namespace's default ServiceAccount: refused
	podIdler   = "127.0.0.4" // opens connections and sits on them
)

var testPods = map[string]podresolve.Pod{
	podApp:     {Namespace: "shop", Name: "cart", UID: "uid-cart", ServiceAccount: "cart"},
	podOther:   {Namespace: "shop", Name: "web", UID: "uid-web", ServiceAccount: "web"},
	podDefault: {Namespace: "shop", Name: "legacy", UID: "uid-legacy", ServiceAccount: "default"},
	podIdler:   {Namespace: "shop", Name: "idler", UID: "uid-idler", ServiceAccount: "idler"},
}

// Markers the fakes put into every secret, so that a leak can be found.
var secretMarkers = []string{"SATOKEN-", "SECRETKEY-", "SESSIONTOKEN-"}

// fakeResolver resolves testPods' addresses.
func fakeResolver() *testfake.Resolver {
	r := &testfake.Resolver{}
	for addr, p := range testPods {
		p.IPs = []netip.Addr{netip.MustParseAddr(addr)}
		r.Set(addr, p)
	}
	return r
}

// fakeExchanger names the pod in the access key id (read back from the
// pod-bound token), so a test can tell whose credentials it was given.
type fakeExchanger struct{}

func (fakeExchanger) Exchange(_ context.Context, req exchange.Request) (exchange.Credentials, error) {
	uid := strings.TrimPrefix(req.Token.Reveal(), "SATOKEN-")
	return exchange.Credentials{
		Kind:            exchange.KindAWS,
		AccessKeyID:     "ASIA-" + uid,
		SecretAccessKey: exchange.Secret("SECRETKEY-" + uid),
		SessionToken:    exchange.Secret("SESSIONTOKEN-" + uid),
		AccountID:       "111122223333",
		Expiration:      time.Now().Add(time.Hour),
	}, nil
}

func fakeKube(t testing.TB) *fake.Clientset {
	client := fake.NewClientset()
	for _, sa := range []struct{ name, role string }{
		{"cart", "arn:aws:iam::111122223333:role/cart"}, {"web", "arn:aws:iam::111122223333:role/web"},
		{"idler", "arn:aws:iam::111122223333:role/idler"}, {"default", ""},
	} {
		obj := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: sa.name}}
		if sa.role != "" {
			obj.Annotations = map[string]string{"eks.amazonaws.com/role-arn": sa.role}
		}
		if _, err := client.CoreV1().ServiceAccounts("shop").Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kubetest.IssueTokens(client, 10*time.Minute, func(tr *authenticationv1.TokenRequest) string {
		uid := types.UID("")
		if tr.Spec.BoundObjectRef != nil {
			uid = tr.Spec.BoundObjectRef.UID
		}
		return "SATOKEN-" + string(uid)
	})
	return client
}

type testStack struct {
	t       testing.TB
	grd     *guards
	handler http.Handler
	srv     *http.Server
	reg     *prometheus.Registry
	logs    *testfake.Buffer
	stop    func()
}

// defaultGuardConfig is what the flags default to.
func defaultGuardConfig(t testing.TB) guardConfig {
	t.Helper()
	return mustParse(t, minimalFlags...).guard
}

// newStack builds the request path; mutate changes the guard flags.
func newStack(t testing.TB, mutate func(*guardConfig)) *testStack {
	t.Helper()
	s := &testStack{t: t, reg: prometheus.NewRegistry(), logs: &testfake.Buffer{}}
	gc := defaultGuardConfig(t)
	if mutate != nil {
		mutate(&gc)
	}
	log := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	grd, err := newGuards(gc, s.reg, log.Handler())
	if err != nil {
		t.Fatal(err)
	}
	s.grd = grd
	brk, err := broker.New(broker.Config{
		ServiceAccounts: kubetest.ServiceAccounts(fakeKube(t)), Resolver: fakeResolver(), Clouds: []broker.Cloud{awsexchange.Profile(awsexchange.ProfileConfig{Exchanger: fakeExchanger{}})},
		Registerer: s.reg, Logger: grd.brokerLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.handler, err = surfaces(tracedBroker{Broker: brk}, grd, surfaceClouds(gcpConfig{}, azureConfig{}, podTokenConfig{})); err != nil {
		t.Fatal(err)
	}
	s.srv = newCredentialServer(s.handler, log)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = brk.Run(ctx) })
	wg.Go(func() { _ = grd.logs.Run(ctx) })
	s.stop = func() {
		_ = s.srv.Close()
		cancel()
		wg.Wait()
	}
	t.Cleanup(func() {
		s.stop()
		s.assertNoSecretsLogged()
	})
	// As serve does: no request before the ServiceAccount watch has listed.
	if !waitUntil(context.Background(), brk.HasSynced, 10*time.Second) {
		t.Fatal("the broker's ServiceAccount watch did not sync")
	}
	return s
}

// listen serves the stack on a loopback port and returns its address.
func (s *testStack) listen() string {
	s.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	go func() { _ = s.srv.Serve(s.grd.listener(ln)) }()
	return ln.Addr().String()
}

func (s *testStack) assertNoSecretsLogged() {
	s.t.Helper()
	haystack := s.logs.String()
	mfs, _ := s.reg.Gather()
	for _, mf := range mfs {
		haystack += mf.String()
	}
	for _, m := range secretMarkers {
		if strings.Contains(haystack, m) {
			s.t.Errorf("a secret (%s...) reached the logs or the metrics", m)
		}
	}
}

func (s *testStack) counter(name string, labels map[string]string) float64 {
	s.t.Helper()
	return testfake.Metric(s.t, s.reg, name, labels)
}

// dial opens a TCP connection from the given loopback source address.
func dial(t testing.TB, from, to string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// answer is one HTTP response as a caller sees it.
type answer struct {
	status int
	header http.Header
	body   string
	code   string // the error JSON's code, checked to equal Code
	key    string // AccessKeyId of a 200
	close  bool   // the server closes the connection after this answer
}

// parseAnswer reads one response and checks the caller contract's shape:
// a 200 to GET is credentials JSON; an error from the agent is JSON with
// both code pairs, and never carries a secret.
func parseAnswer(t testing.TB, br *bufio.Reader, method string) (answer, error) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, fmt.Errorf("reading body: %w", err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(body), close: resp.Close}
	switch {
	case resp.StatusCode == http.StatusOK && method == http.MethodGet:
		var c struct{ AccessKeyId, SecretAccessKey, Token, Expiration string }
		if err := json.Unmarshal(body, &c); err != nil || c.AccessKeyId == "" || c.SecretAccessKey == "" || c.Token == "" {
			return a, fmt.Errorf("200 without credentials JSON: %v: %q", err, body)
		}
		a.key = c.AccessKeyId
	case resp.StatusCode != http.StatusOK:
		for _, m := range secretMarkers {
			if strings.Contains(a.body, m) {
				return a, fmt.Errorf("a secret (%s...) in a %d answer", m, resp.StatusCode)
			}
		}
		if resp.Header.Get("Content-Type") == "application/json" && method != http.MethodHead {
			var e map[string]string
			if err := json.Unmarshal(body, &e); err != nil || e["code"] == "" || e["code"] != e["Code"] || e["message"] != e["Message"] {
				return a, fmt.Errorf("error JSON without both code pairs: %v: %q", err, body)
			}
			a.code = e["code"]
		}
	}
	return a, nil
}

// rawRequest sends raw bytes from a source address and reads one answer.
func rawRequest(t testing.TB, from, to, method, raw string) answer {
	t.Helper()
	conn := dial(t, from, to)
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	a, err := parseAnswer(t, bufio.NewReader(conn), method)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// keyOf is the access key id the fake exchanger mints for a pod.
func keyOf(addr string) string { return "ASIA-" + string(testPods[addr].UID) }
