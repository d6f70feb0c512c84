package webhook

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// fakeConfigurations is one MutatingWebhookConfiguration with two
// webhooks; patches are applied as the API server would (the test op on
// the resourceVersion included).
type fakeConfigurations struct {
	mu      sync.Mutex
	rv      int
	bundles [2][]byte
	patches int
}

func (f *fakeConfigurations) GetWebhookConfiguration(context.Context, string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": fmt.Sprint(f.rv)},
		"webhooks": []any{
			map[string]any{"name": "a", "clientConfig": map[string]any{"caBundle": f.bundles[0]}},
			map[string]any{"name": "b", "clientConfig": map[string]any{"caBundle": f.bundles[1]}},
		},
	})
}

func (f *fakeConfigurations) PatchWebhookConfiguration(_ context.Context, _ string, patch []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ops []struct {
		Op, Path string
		Value    any
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		return err
	}
	if ops[0].Op != "test" || ops[0].Path != "/metadata/resourceVersion" || ops[0].Value != fmt.Sprint(f.rv) {
		return fmt.Errorf("conflict: %v", ops[0])
	}
	for _, op := range ops[1:] {
		var i int
		switch {
		case op.Op == "add" && (op.Path == "/webhooks/0/clientConfig/caBundle" || op.Path == "/webhooks/1/clientConfig/caBundle"):
			fmt.Sscanf(op.Path, "/webhooks/%d/", &i)
			var b []byte
			raw, _ := json.Marshal(op.Value)
			if err := json.Unmarshal(raw, &b); err != nil {
				return err
			}
			f.bundles[i] = b
		case op.Op == "test":
		default:
			return fmt.Errorf("unexpected op %v", op)
		}
	}
	f.rv++
	f.patches++
	return nil
}

func (f *fakeConfigurations) pool(i int) *x509.CertPool {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(f.bundles[i])
	return p
}

func count(bundle []byte) int {
	n := 0
	for {
		var b *pem.Block
		if b, bundle = pem.Decode(bundle); b == nil {
			return n
		}
		n++
	}
}

// The leaf is served only after its CA is in every webhook's caBundle and
// the publish delay has passed; at rotation the new CA joins the old one,
// which stays until it expires; every certificate served verifies against
// the bundle of that moment.
func TestCertificatesPublishedBeforeServedAndRotated(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	f := &fakeConfigurations{rv: 7}
	c, err := NewCerts(CertConfig{DNSNames: []string{"credbroker-webhook.credbroker-system.svc"}, Validity: 3 * time.Hour,
		PublishDelay: 10 * time.Second, WebhookConfiguration: "credbroker-webhook", Client: f, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitTimer := func() {
		deadline := time.Now().Add(10 * time.Second)
		for !clk.HasWaiters() {
			if time.Now().After(deadline) {
				t.Fatal("Run armed no timer")
			}
			time.Sleep(time.Millisecond)
		}
	}
	verify := func(when string) {
		cert, err := c.GetCertificate(nil)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		for i := range 2 {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: f.pool(i), DNSName: "credbroker-webhook.credbroker-system.svc", CurrentTime: clk.Now()}); err != nil {
				t.Fatalf("%s: served certificate does not verify against webhook %d's caBundle: %v", when, i, err)
			}
		}
	}
	waitTimer() // the publish delay
	if c.Ready() || f.patches != 1 || count(f.bundles[0]) != 1 || count(f.bundles[1]) != 1 {
		t.Fatalf("after publishing: ready %v, %d patches, bundles %d %d", c.Ready(), f.patches, count(f.bundles[0]), count(f.bundles[1]))
	}
	if _, err := c.GetCertificate(nil); err == nil {
		t.Fatal("a certificate is served before the publish delay")
	}
	clk.Step(10 * time.Second)
	waitTimer() // the rotation
	if !c.Ready() {
		t.Fatal("not ready after the publish delay")
	}
	verify("first certificate")
	first, _ := c.GetCertificate(nil)
	clk.Step(2*time.Hour - 10*time.Second) // two thirds of 3h
	waitTimer()                            // the next publish delay
	if f.patches != 2 || count(f.bundles[0]) != 2 {
		t.Fatalf("rotation: %d patches, %d CAs", f.patches, count(f.bundles[0]))
	}
	if cur, _ := c.GetCertificate(nil); cur != first {
		t.Fatal("the new certificate is served before its publish delay")
	}
	verify("old certificate, new CA published")
	clk.Step(10 * time.Second)
	waitTimer()
	if cur, _ := c.GetCertificate(nil); cur == first {
		t.Fatal("no new certificate after the rotation")
	}
	verify("second certificate")
	// The next rotation prunes the first CA, expired by then.
	clk.Step(2*time.Hour - 10*time.Second)
	waitTimer()
	if n := count(f.bundles[0]); n != 2 {
		t.Errorf("after the first CA expired: %d CAs in the bundle, want 2", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// MergeBundle keeps the other replicas' CAs, drops expired and garbage
// blocks, adds a CA once, and keeps at most maxBundle.
func TestMergeBundle(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	mk := func(notAfter time.Time) []byte {
		clk := clocktesting.NewFakeClock(notAfter.Add(-time.Hour))
		c := &Certs{cfg: CertConfig{Validity: time.Hour, Clock: clk}}
		_, ca, _, err := c.issue()
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	other, expired, mine := mk(now.Add(time.Hour)), mk(now.Add(-time.Minute)), mk(now.Add(2*time.Hour))
	garbage := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})
	got := MergeBundle(append(append(append([]byte{}, other...), expired...), garbage...), mine, now)
	if count(got) != 2 {
		t.Fatalf("%d certificates, want mine and the other replica's", count(got))
	}
	if count(MergeBundle(got, mine, now)) != 2 {
		t.Error("the same CA added twice")
	}
	var many []byte
	for i := range 40 {
		many = append(many, mk(now.Add(time.Duration(i+1)*time.Minute))...)
	}
	if n := count(MergeBundle(many, mine, now)); n != maxBundle {
		t.Errorf("%d certificates kept, want %d", n, maxBundle)
	}
}

// With --tls-cert-file (cert-manager), the files are served and re-read
// when they change; no webhook configuration is touched.
func TestCertificateFromFiles(t *testing.T) {
	dir := t.TempDir()
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	write := func(mod time.Time) []byte {
		c := &Certs{cfg: CertConfig{Validity: time.Hour, Clock: clk, DNSNames: []string{"x"}}}
		pair, _, _, err := c.issue()
		if err != nil {
			t.Fatal(err)
		}
		key, err := x509.MarshalPKCS8PrivateKey(pair.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
		if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pair.Certificate[0]}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(certPath, mod, mod); err != nil {
			t.Fatal(err)
		}
		return pair.Certificate[0]
	}
	first := write(time.Unix(1000, 0))
	c, err := NewCerts(CertConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetCertificate(nil)
	if err != nil || !bytes.Equal(got.Certificate[0], first) || !c.Ready() {
		t.Fatalf("first: %v", err)
	}
	second := write(time.Unix(2000, 0))
	if got, _ := c.GetCertificate(nil); !bytes.Equal(got.Certificate[0], first) {
		t.Fatal("re-read within a second of the last look")
	}
	clk.Step(time.Second)
	if got, _ := c.GetCertificate(nil); !bytes.Equal(got.Certificate[0], second) {
		t.Fatal("the changed files were not re-read")
	}
}
