// Package peertest is what the peers' own tests against a real
// kube-apiserver (integration/googlests, integration/entra) share: one
// control plane with two pods of two ServiceAccounts, a clock the test can
// move, the peer's log, pod-bound tokens, forgeries signed with the API
// server's own key, and the check that no secret reached the peer's log.
package peertest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/peer"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
)

// The world's namespace and node; its pods are pod-a (ServiceAccount
// app-a) and pod-b (app-b).
const (
	Namespace = "team"
	Node      = "node-1"
)

// World is one control plane with two pods of two ServiceAccounts, and a
// clock for the peer that the test can move.
type World struct {
	T      *testing.T
	CP     *harness.ControlPlane
	PodA   *corev1.Pod
	PodB   *corev1.Pod
	Offset atomic.Int64     // added to the peer's clock (Now)
	Log    *testfake.Buffer // the peer's log (Logger)
}

// NewWorld starts the control plane (or skips, see testenv) and creates
// the ServiceAccounts and pods.
func NewWorld(t *testing.T) *World {
	t.Helper()
	ctx := context.Background()
	w := &World{T: t, CP: testenv.StartControlPlane(t), Log: &testfake.Buffer{}}
	for _, sa := range []string{"app-a", "app-b"} {
		if _, err := w.CP.CreateServiceAccount(ctx, Namespace, sa, ""); err != nil {
			t.Fatal(err)
		}
	}
	w.PodA = w.CreatePod("pod-a", "app-a")
	w.PodB = w.CreatePod("pod-b", "app-b")
	return w
}

// Now is the peer's clock: the real time plus Offset.
func (w *World) Now() time.Time { return time.Now().Add(time.Duration(w.Offset.Load())) }

// Logger writes JSON lines to Log.
func (w *World) Logger() *slog.Logger { return slog.New(slog.NewJSONHandler(w.Log, nil)) }

// PodUID is the peer's pod-binding lookup against the control plane.
func (w *World) PodUID(ctx context.Context, namespace, name string) (string, error) {
	pod, err := w.CP.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", peer.ErrPodNotFound
	}
	if err != nil {
		return "", err
	}
	return string(pod.UID), nil
}

// CreatePod creates pod name of ServiceAccount sa in Namespace on Node.
func (w *World) CreatePod(name, sa string) *corev1.Pod {
	w.T.Helper()
	p, err := w.CP.CreatePod(context.Background(), harness.PodSpec{Namespace: Namespace, Name: name, ServiceAccount: sa, NodeName: Node})
	if err != nil {
		w.T.Fatal(err)
	}
	return p
}

// Token is a TokenRequest bound to pod with the given audience, as the
// agent asks for it.
func (w *World) Token(pod *corev1.Pod, aud string) exchange.Secret {
	w.T.Helper()
	secs := int64(600)
	tr, err := w.CP.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{aud},
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		w.T.Fatal(err)
	}
	return exchange.Secret(tr.Status.Token)
}

// Forge signs the claims of real, changed by mutate, with the API server's
// own ServiceAccount key (as the real issuer would), so that every claim
// check can be tried on its own.
func Forge(t *testing.T, cp *harness.ControlPlane, real exchange.Secret, mutate func(m map[string]any)) exchange.Secret {
	t.Helper()
	return resign(t, APIServerKey(t, cp), real, mutate)
}

// NewKey is an RSA key no issuer knows.
func NewKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Resigned signs real's claims with key under real's own key ID: a forgery
// that differs from a real token only in its signature.
func Resigned(t *testing.T, key *rsa.PrivateKey, real exchange.Secret) exchange.Secret {
	t.Helper()
	return resign(t, key, real, func(map[string]any) {})
}

// resign signs real's claims, changed by mutate, with key under real's own
// key ID.
func resign(t *testing.T, key *rsa.PrivateKey, real exchange.Secret, mutate func(m map[string]any)) exchange.Secret {
	t.Helper()
	p, err := jwt.ParseSigned(real.Reveal(), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := p.UnsafeClaimsWithoutVerification(&m); err != nil {
		t.Fatal(err)
	}
	mutate(m)
	return Sign(t, key, p.Headers[0].KeyID, m)
}

// Unbound is a token of ServiceAccount sa (in Namespace) for aud, bound to
// no pod.
func (w *World) Unbound(sa, aud string) exchange.Secret {
	w.T.Helper()
	tr, err := w.CP.Client.CoreV1().ServiceAccounts(Namespace).CreateToken(context.Background(), sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		w.T.Fatal(err)
	}
	return exchange.Secret(tr.Status.Token)
}

// Sign makes an RS256 JWT of claims with key under key ID kid.
func Sign(t *testing.T, key *rsa.PrivateKey, kid string, claims map[string]any) exchange.Secret {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return exchange.Secret(tok)
}

// APIServerKey is the control plane's ServiceAccount signing key.
func APIServerKey(t *testing.T, cp *harness.ControlPlane) *rsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cp.Dir, "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Started is a peer as its New returned it (s, err), listening on a free
// loopback port until the test ends; a peer that cannot be made or started
// fails the test.
func Started[S interface {
	Start(addr string) error
	Close() error
}](t testing.TB, s S, err error) S {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// AWSErrorCode is the error code an AWS SDK client reports for err
// (AccessDenied, InvalidIdentityToken...), or "" when err carries none: how
// the tests that call oidcsts with the real SDK read its refusals.
func AWSErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// XErr is err as an *exchange.Error, or the test fails.
func XErr(t *testing.T, err error) *exchange.Error {
	t.Helper()
	var xe *exchange.Error
	if !errors.As(err, &xe) {
		t.Fatalf("error %v is not an *exchange.Error", err)
	}
	return xe
}

// AssertNoSecretsLogged checks a peer's log against every token it
// received or issued (secrets), whole and in parts.
func AssertNoSecretsLogged(t *testing.T, log string, secrets []string) {
	t.Helper()
	if log == "" {
		t.Error("the peer logged nothing")
	}
	if len(secrets) == 0 {
		t.Error("the peer recorded no secrets")
	}
	for _, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("the peer's log contains a token")
			return
		}
		for part := range strings.SplitSeq(s, ".") {
			if len(part) >= 16 && strings.Contains(log, part) {
				t.Errorf("the peer's log contains part of a token")
				return
			}
		}
	}
}

// RunStaleTokens runs the subtests every peer's rejection test makes of a
// token that was real when issued but is stale now: expired by the peer's
// clock (Offset moved past its ten minutes), its pod deleted, its pod
// replaced by one of the same name (another UID). token makes a pod's token
// for the peer, call exchanges it, and expired checks the error of the
// first, whose code each peer words its own way.
func (w *World) RunStaleTokens(t *testing.T, token func(*corev1.Pod) exchange.Secret, call func(exchange.Secret) error, expired func(t *testing.T, err error)) {
	t.Helper()
	ctx := context.Background()
	t.Run("expired by the clock", func(t *testing.T) {
		tok := token(w.PodA) // valid for 10 minutes
		w.Offset.Store(int64(11 * time.Minute))
		defer w.Offset.Store(0)
		expired(t, call(tok))
	})
	t.Run("pod deleted", func(t *testing.T) {
		pod := w.CreatePod("short-lived", "app-a")
		tok := token(pod)
		if err := w.CP.DeletePod(ctx, Namespace, pod.Name); err != nil {
			t.Fatal(err)
		}
		err := call(tok)
		if xe := XErr(t, err); xe.Kind != exchange.InvalidToken || !strings.Contains(err.Error(), "no longer exists") {
			t.Errorf("error %v, want InvalidToken: pod gone", err)
		}
	})
	t.Run("pod replaced", func(t *testing.T) {
		pod := w.CreatePod("replaced", "app-a")
		tok := token(pod)
		if err := w.CP.DeletePod(ctx, Namespace, pod.Name); err != nil {
			t.Fatal(err)
		}
		w.CreatePod("replaced", "app-a")
		err := call(tok)
		if xe := XErr(t, err); xe.Kind != exchange.InvalidToken || !strings.Contains(err.Error(), "was replaced") {
			t.Errorf("error %v, want InvalidToken: pod replaced", err)
		}
	})
}

// TransportFault is what every peer's Fault can inject below its error
// format: latency, refused connections, reset connections.
type TransportFault struct {
	Latency       time.Duration
	Refuse, Reset bool
}

// TransportFaults are one peer's hooks for RunTransportFaults.
type TransportFaults struct {
	// Set applies f (the zero value clears it) to the endpoint the calls
	// below reach.
	Set func(f TransportFault) error
	// Call makes one exchange through the peer.
	Call func() error
	// Timeout makes one exchange with a 200 ms client timeout.
	Timeout func() error
	// Refused is the call made while connections are refused (Call if
	// nil).
	Refused func() error
}

// RunTransportFaults runs the subtests every peer's TestFaults makes of
// its transport faults: a slow answer cut short by the client, a slow
// answer that arrives, refused connections and recovery, a reset.
func RunTransportFaults(t *testing.T, f TransportFaults) {
	if f.Refused == nil {
		f.Refused = f.Call
	}
	set := func(t *testing.T, tf TransportFault) {
		t.Helper()
		if err := f.Set(tf); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("slow answer and a client timeout", func(t *testing.T) {
		set(t, TransportFault{Latency: time.Minute})
		defer f.Set(TransportFault{})
		start := time.Now()
		err := f.Timeout()
		if xe := XErr(t, err); xe.Kind != exchange.Transient || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("error %v, want Transient timeout", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v: the latency fault is not cut short by the client", d)
		}
	})
	t.Run("slow answer that arrives", func(t *testing.T) {
		set(t, TransportFault{Latency: 300 * time.Millisecond})
		defer f.Set(TransportFault{})
		start := time.Now()
		if err := f.Call(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("answered in %v, before the injected latency", d)
		}
	})
	t.Run("refuse and recover", func(t *testing.T) {
		set(t, TransportFault{Refuse: true})
		err := f.Refused()
		if xe := XErr(t, err); xe.Kind != exchange.Transient || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("while refusing: %v, want Transient connection refused", err)
		}
		set(t, TransportFault{})
		if err := f.Call(); err != nil {
			t.Errorf("after recovery: %v", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		set(t, TransportFault{Reset: true})
		defer f.Set(TransportFault{})
		err := f.Call()
		if xe := XErr(t, err); xe.Kind != exchange.Transient || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("while resetting: %v, want Transient connection reset", err)
		}
	})
}
