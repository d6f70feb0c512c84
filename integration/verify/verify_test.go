//go:build integration

// Package verify_test checks pkg/verify against a real kube-apiserver:
// tokens minted by TokenRequest bound to pods, verified through the API
// server's own discovery and JWKS, and TokenReview rejecting the token of a
// deleted pod.
package verify_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/verify"
)

const (
	ns       = "shop"
	audience = "orders.shop.svc"
	node     = "node-1"
)

// world is one control plane with a receiving service's identity and two
// calling pods.
type world struct {
	cp            *harness.ControlPlane
	receiverToken string // the verifier's own ServiceAccount token
	frontend      *corev1.Pod
	backend       *corev1.Pod
	frontendSA    *corev1.ServiceAccount
	jwksFetches   atomic.Int64
	discFetches   atomic.Int64
}

func setup(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	w := &world{cp: testenv.StartControlPlane(t)}
	var err error
	for _, sa := range []string{"frontend", "backend", "receiver"} {
		created, err := w.cp.CreateServiceAccount(ctx, ns, sa, "")
		if err != nil {
			t.Fatal(err)
		}
		if sa == "frontend" {
			w.frontendSA = created
		}
	}
	// The receiving service may create TokenReviews (system:auth-delegator,
	// as a real deployment binds it). Discovery needs nothing: the API
	// server's default RBAC binds system:service-account-issuer-discovery
	// to every ServiceAccount.
	if _, err := w.cp.Kubectl(ctx, "create", "clusterrolebinding", "receiver-auth-delegator",
		"--clusterrole=system:auth-delegator", "--serviceaccount="+ns+":receiver"); err != nil {
		t.Fatal(err)
	}
	if w.receiverToken, err = w.cp.ServiceAccountToken(ctx, ns, "receiver", time.Hour); err != nil {
		t.Fatal(err)
	}
	if w.frontend, err = w.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: "frontend-1", ServiceAccount: "frontend",
		NodeName: node, IP: netip.MustParseAddr("10.244.13.10")}); err != nil {
		t.Fatal(err)
	}
	if w.backend, err = w.cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: "backend-1", ServiceAccount: "backend",
		NodeName: node, IP: netip.MustParseAddr("10.244.13.11")}); err != nil {
		t.Fatal(err)
	}
	return w
}

// podToken mints a token for the pod's ServiceAccount, bound to the pod,
// for the audiences (none: the API server's own), as the agent does.
func (w *world) podToken(t *testing.T, pod *corev1.Pod, audiences ...string) string {
	t.Helper()
	secs := int64(600)
	tr, err := w.cp.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences:         audiences,
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	return tr.Status.Token
}

// restConfig is the receiving service's in-cluster view: its own token and
// the cluster CA, with the discovery and JWKS requests counted.
func (w *world) restConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            w.cp.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: w.cp.CACert},
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper {
			return countingTransport{rt: rt, w: w}
		},
	}
}

type countingTransport struct {
	rt http.RoundTripper
	w  *world
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	switch r.URL.Path {
	case "/openid/v1/jwks":
		c.w.jwksFetches.Add(1)
	case "/.well-known/openid-configuration":
		c.w.discFetches.Add(1)
	}
	return c.rt.RoundTrip(r)
}

func (w *world) verifier(t *testing.T, cfg verify.Config) *verify.Verifier {
	t.Helper()
	if cfg.Kubernetes == nil && cfg.Issuer == "" {
		cfg.Kubernetes = w.restConfig(w.receiverToken)
	}
	if cfg.Audiences == nil {
		cfg.Audiences = []string{audience}
	}
	if cfg.Subjects == nil {
		cfg.Subjects = []string{"system:serviceaccount:shop:front*"}
	}
	v, err := verify.New(cfg)
	if err != nil {
		t.Fatalf("verify.New: %v", err)
	}
	return v
}

// wantRefused checks the reason and that the text does not carry the token.
func wantRefused(t *testing.T, err error, kind error, token string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("Verify = %v, want %v", err, kind)
	}
	if strings.Contains(err.Error(), token) || strings.Contains(err.Error(), token[strings.LastIndex(token, ".")+1:]) {
		t.Fatalf("error text contains the token: %v", err)
	}
}

func TestVerifyRealAPIServer(t *testing.T) {
	w := setup(t)
	ctx := context.Background()
	token := w.podToken(t, w.frontend, audience)

	t.Run("in-cluster discovery, pod-bound token", func(t *testing.T) {
		v := w.verifier(t, verify.Config{})
		id, err := v.Verify(ctx, token)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if id.Issuer != w.cp.Issuer || id.Subject != "system:serviceaccount:shop:frontend" || id.Namespace != ns ||
			id.ServiceAccount != "frontend" || id.ServiceAccountUID != string(w.frontendSA.UID) ||
			id.PodName != "frontend-1" || id.PodUID != string(w.frontend.UID) || id.NodeName != node ||
			len(id.Audiences) != 1 || id.Audiences[0] != audience || id.Reviewed {
			t.Fatalf("identity %+v", *id)
		}
		if d := id.Expiry.Sub(id.IssuedAt); d != 10*time.Minute {
			t.Fatalf("lifetime %v, want 10m", d)
		}
		t.Logf("identity: %+v", *id)
	})

	t.Run("issuer URL discovery", func(t *testing.T) {
		// The issuer is the API server's URL here; its discovery is not
		// anonymous, so the client carries a ServiceAccount token, as a
		// client for a private issuer would.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(w.cp.CACert)
		client := &http.Client{Timeout: 10 * time.Second, Transport: bearerTransport{
			token: w.receiverToken,
			rt:    &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		}}
		v := w.verifier(t, verify.Config{Issuer: w.cp.Issuer, HTTPClient: client})
		if _, err := v.Verify(ctx, token); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		v := w.verifier(t, verify.Config{})
		for _, tc := range []struct {
			name  string
			token string
			want  error
		}{
			{"another service's audience", w.podToken(t, w.frontend, "billing.shop.svc"), verify.ErrAudience},
			{"the agent's exchange audience", w.podToken(t, w.frontend, "sts.amazonaws.com"), verify.ErrAudience},
			{"the API server's audiences", w.podToken(t, w.frontend), verify.ErrAudience},
			{"a subject not allowed", w.podToken(t, w.backend, audience), verify.ErrSubject},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := v.Verify(ctx, tc.token)
				wantRefused(t, err, tc.want, tc.token)
			})
		}
	})

	t.Run("expired and not yet valid", func(t *testing.T) {
		clk := clocktesting.NewFakePassiveClock(time.Now())
		v := w.verifier(t, verify.Config{Clock: clk, Leeway: 30 * time.Second})
		id, err := v.Verify(ctx, token)
		if err != nil {
			t.Fatal(err)
		}
		// Relative to the API server's own iat and exp (nbf = iat).
		for _, tc := range []struct {
			at   time.Time
			want error
		}{
			{id.Expiry.Add(29 * time.Second), nil},
			{id.Expiry.Add(31 * time.Second), verify.ErrExpired},
			{id.IssuedAt.Add(-29 * time.Second), nil},
			{id.IssuedAt.Add(-31 * time.Second), verify.ErrNotYetValid},
		} {
			clk.SetTime(tc.at)
			_, err := v.Verify(ctx, token)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("at %v: Verify = %v, want accepted within the leeway", tc.at, err)
				}
				continue
			}
			wantRefused(t, err, tc.want, token)
		}
	})

	t.Run("random key IDs do not hammer the API server", func(t *testing.T) {
		const interval = time.Second
		v := w.verifier(t, verify.Config{RefreshInterval: interval})
		if _, err := v.Verify(ctx, token); err != nil {
			t.Fatal(err)
		}
		before := w.jwksFetches.Load()
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		flood := make([]string, 200)
		for i := range flood {
			flood[i] = signWithKID(t, key, randomKID(), w.cp.Issuer)
		}
		start := time.Now()
		n := 0
		for time.Since(start) < 3*time.Second {
			tok := flood[n%len(flood)]
			_, err := v.Verify(ctx, tok)
			wantRefused(t, err, verify.ErrUnknownKey, tok)
			n++
		}
		elapsed := time.Since(start)
		fetches := w.jwksFetches.Load() - before
		t.Logf("%d tokens with random key IDs in %v: %d JWKS fetches from the API server (RefreshInterval %v)",
			n, elapsed.Round(time.Millisecond), fetches, interval)
		if max := int64(elapsed/interval) + 1; fetches > max {
			t.Fatalf("%d JWKS fetches during the flood, want at most %d", fetches, max)
		}
		if _, err := v.Verify(ctx, token); err != nil {
			t.Fatalf("Verify(real token) after the flood: %v", err)
		}
	})

	t.Run("TokenReview without RBAC is unavailable, not a verdict", func(t *testing.T) {
		other, err := w.cp.ServiceAccountToken(ctx, ns, "backend", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		v := w.verifier(t, verify.Config{Kubernetes: w.restConfig(other), TokenReview: true})
		_, err = v.Verify(ctx, token)
		var ve *verify.Error
		if !errors.As(err, &ve) || ve.Kind != verify.ErrUnavailable || !ve.Retryable() {
			t.Fatalf("Verify = %v, want a retryable ErrUnavailable", err)
		}
	})

	t.Run("middleware", func(t *testing.T) {
		v := w.verifier(t, verify.Config{TokenReview: true})
		srv := httptest.NewServer(v.Middleware(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			id, _ := verify.FromContext(r.Context())
			_, _ = io.WriteString(rw, id.Namespace+"/"+id.PodName)
		})))
		defer srv.Close()
		for _, tc := range []struct {
			token      string
			wantStatus int
			wantBody   string
		}{
			{token, 200, "shop/frontend-1"},
			{w.podToken(t, w.backend, audience), 403, "subject not allowed\n"},
			{w.podToken(t, w.frontend, "sts.amazonaws.com"), 401, "wrong audience\n"},
		} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			req.Header.Set("Authorization", "Bearer "+tc.token)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus || string(body) != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
		}
	})

	t.Run("example receiver", func(t *testing.T) { testExampleReceiver(t, w, token) })

	// Last: deletes the frontend pod.
	t.Run("TokenReview rejects a deleted pod's token", func(t *testing.T) {
		reviewed := w.verifier(t, verify.Config{TokenReview: true, ReviewCacheTTL: -1})
		local := w.verifier(t, verify.Config{})
		id, err := reviewed.Verify(ctx, token)
		if err != nil || !id.Reviewed {
			t.Fatalf("Verify with TokenReview = %+v, %v", id, err)
		}
		if err := w.cp.DeletePod(ctx, ns, "frontend-1"); err != nil {
			t.Fatal(err)
		}
		deleted := time.Now()
		// kube-apiserver caches a successful token authentication for 10 s
		// (TokenSuccessCacheTTL in its authentication options):
		// poll the verdict until it turns, within a bound.
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err = reviewed.Verify(ctx, token)
			if err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("TokenReview still authenticates the deleted pod's token after 30s")
			}
			time.Sleep(100 * time.Millisecond)
		}
		wantRefused(t, err, verify.ErrRevoked, token)
		t.Logf("%v after the deletion: %v", time.Since(deleted).Round(100*time.Millisecond), err)
		// Without TokenReview the signature alone still passes: this is
		// what TokenReview adds.
		if _, err := local.Verify(ctx, token); err != nil {
			t.Fatalf("local Verify of the deleted pod's token = %v; expected it to pass (signature and claims are still valid)", err)
		}
	})
}

type bearerTransport struct {
	token string
	rt    http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.rt.RoundTrip(r)
}

func randomKID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// signWithKID mints a well-formed token for the receiver's audience and an
// allowed subject under a key ID the issuer does not have.
func signWithKID(t *testing.T, key *rsa.PrivateKey, kid, iss string) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key},
		(&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(s).Claims(jwt.Claims{
		Issuer: iss, Subject: "system:serviceaccount:shop:frontend", Audience: jwt.Audience{audience},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// testExampleReceiver builds examples/service-to-service/receiver, runs it
// against the API server with the receiving ServiceAccount's token file,
// and calls it as the frontend pod would.
func testExampleReceiver(t *testing.T, w *world, token string) {
	ctx := context.Background()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "receiver")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./examples/service-to-service/receiver")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the example: %v\n%s", err, out)
	}
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokenFile, []byte(w.receiverToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, w.cp.CACert, 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := harness.StartProcess("receiver", filepath.Join(dir, "receiver.log"), nil, bin,
		"--listen="+addr, "--api-server="+w.cp.URL, "--token-file="+tokenFile, "--ca-file="+caFile,
		"--audience="+audience, "--allow=system:serviceaccount:shop:frontend", "--token-review")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(5 * time.Second)

	// Wait for /readyz: the key set is loaded from the API server.
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-p.Done():
			t.Fatalf("receiver exited:\n%s", p.LogTail(20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver not ready after 20s:\n%s", p.LogTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	call := func(tok string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/orders", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := call(token)
	want := `{"namespace":"shop","node":"node-1","pod":"frontend-1","podUID":"` + string(w.frontend.UID) + `","reviewed":true,"serviceAccount":"frontend"}` + "\n"
	if code != 200 || body != want {
		t.Fatalf("frontend's call: %d %q, want 200 %q", code, body, want)
	}
	if code, _ := call(w.podToken(t, w.backend, audience)); code != http.StatusForbidden {
		t.Fatalf("backend's call: %d, want 403", code)
	}
	if code, _ := call(""); code != http.StatusUnauthorized {
		t.Fatalf("call without a token: %d, want 401", code)
	}
	if log, err := os.ReadFile(filepath.Join(dir, "receiver.log")); err != nil || strings.Contains(string(log), token) {
		t.Fatalf("receiver log unreadable (%v) or contains the token", err)
	}
}
