package webhook

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// WebhookConfigurationClient reads and patches the webhook's own
// MutatingWebhookConfiguration; pkg/kube's Client is one.
type WebhookConfigurationClient interface {
	GetWebhookConfiguration(ctx context.Context, name string) ([]byte, error)
	PatchWebhookConfiguration(ctx context.Context, name string, patch []byte) error
}

// CertConfig configures Certs.
type CertConfig struct {
	// DNSNames and IPs the serving certificate names (the Service's
	// <name>.<namespace>.svc; 127.0.0.1 for an API server on the same host).
	DNSNames []string
	IPs      []net.IP
	// Validity of each CA and leaf; a new pair is made after two thirds of
	// it. Default 168h.
	Validity time.Duration
	// PublishDelay is how long a new CA sits in the caBundle before its
	// leaf is served: the API servers read the configuration through a
	// watch, and a leaf served before they see its CA fails their TLS
	// check (an admission lost to failurePolicy Ignore). Default 10s.
	PublishDelay time.Duration
	// WebhookConfiguration names the MutatingWebhookConfiguration whose
	// webhooks' caBundle gets each CA; Client reads and patches it.
	WebhookConfiguration string
	Client               WebhookConfigurationClient
	// CertFile and KeyFile, when set, are served instead (cert-manager or
	// any other issuer writes them, and injects the CA itself); they are
	// re-read when they change.
	CertFile, KeyFile string
	Metrics           *Metrics
	Logger            *slog.Logger
	Clock             clock.Clock
}

// Certs serves the webhook's certificate and keeps it valid.
type Certs struct {
	cfg     CertConfig
	current atomic.Pointer[tls.Certificate]

	mu       sync.Mutex // guards the file state below
	fileMod  time.Time
	fileNext time.Time
}

// NewCerts checks cfg.
func NewCerts(cfg CertConfig) (*Certs, error) {
	cfg.Validity = cmp.Or(cfg.Validity, 168*time.Hour)
	cfg.PublishDelay = cmp.Or(cfg.PublishDelay, 10*time.Second)
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	switch {
	case (cfg.CertFile == "") != (cfg.KeyFile == ""):
		return nil, errors.New("webhook: a certificate file needs its key file and the other way round")
	case cfg.CertFile == "" && (cfg.WebhookConfiguration == "" || cfg.Client == nil):
		return nil, errors.New("webhook: a self-issued certificate needs the webhook configuration's name and a client")
	case cfg.Validity < 3*cfg.PublishDelay:
		return nil, fmt.Errorf("webhook: certificate validity %s is too short for a publish delay of %s", cfg.Validity, cfg.PublishDelay)
	}
	return &Certs{cfg: cfg}, nil
}

// Ready reports whether a certificate is served whose CA the webhook
// configuration holds (the replica may then receive admissions).
func (c *Certs) Ready() bool { return c.current.Load() != nil }

// GetCertificate is tls.Config's.
func (c *Certs) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c.cfg.CertFile != "" {
		if err := c.reloadFiles(); err != nil && c.current.Load() == nil {
			return nil, err
		}
	}
	if cert := c.current.Load(); cert != nil {
		return cert, nil
	}
	return nil, errors.New("webhook: no serving certificate yet")
}

// Run keeps the certificate valid until ctx ends: with files, it loads
// them; otherwise it makes a CA and a leaf, adds the CA to the webhook
// configuration's caBundle (retrying until it is in), waits PublishDelay,
// serves the leaf, and starts over at two thirds of the validity.
func (c *Certs) Run(ctx context.Context) error {
	if c.cfg.CertFile != "" {
		c.fileNext = time.Time{}
		if err := c.reloadFiles(); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
	for {
		pair, caPEM, notAfter, err := c.issue()
		if err != nil {
			return err
		}
		if err := c.publishRetrying(ctx, caPEM); err != nil {
			return nil // ctx ended
		}
		if !c.sleep(ctx, c.cfg.PublishDelay) {
			return nil
		}
		c.current.Store(pair)
		c.cfg.Metrics.caPublished.Set(1)
		c.cfg.Metrics.rotations.Inc()
		c.cfg.Metrics.certExpiry.Set(float64(notAfter.Unix()))
		c.cfg.Logger.Info("serving a new certificate", "notAfter", notAfter.UTC().Format(time.RFC3339))
		rotateAt := notAfter.Add(-c.cfg.Validity / 3)
		if !c.sleep(ctx, rotateAt.Sub(c.cfg.Clock.Now())) {
			return nil
		}
	}
}

func (c *Certs) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := c.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// issue makes a CA and a leaf it signs, both valid for Validity. The CA's
// key is dropped once the leaf is signed: a CA signs one leaf only.
func (c *Certs) issue() (*tls.Certificate, []byte, time.Time, error) {
	now := c.cfg.Clock.Now()
	notAfter := now.Add(c.cfg.Validity)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("generating CA key: %w", err)
	}
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		return n
	}
	host, _ := os.Hostname()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "credbroker-webhook-ca " + host + " " + now.UTC().Format(time.RFC3339)},
		NotBefore:             now.Add(-5 * time.Minute), // API servers with a clock slightly behind
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("creating CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("generating serving key: %w", err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "credbroker-webhook"},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     c.cfg.DNSNames,
		IPAddresses:  c.cfg.IPs,
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("creating serving certificate: %w", err)
	}
	pair := &tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
	return pair, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), notAfter, nil
}

// publishRetrying adds caPEM to the caBundle until that works or ctx ends.
func (c *Certs) publishRetrying(ctx context.Context, caPEM []byte) error {
	backoff := time.Second
	for {
		err := c.publish(ctx, caPEM)
		if err == nil {
			c.cfg.Metrics.caPatches.WithLabelValues("ok").Inc()
			return nil
		}
		c.cfg.Metrics.caPatches.WithLabelValues("error").Inc()
		c.cfg.Logger.Warn("adding the CA to the webhook configuration failed; retrying", "configuration", c.cfg.WebhookConfiguration, "error", err, "retryIn", backoff)
		if !c.sleep(ctx, backoff) {
			return ctx.Err()
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// webhookConfiguration is the part of a MutatingWebhookConfiguration that
// publish reads.
type webhookConfiguration struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Webhooks []struct {
		Name         string `json:"name"`
		ClientConfig struct {
			CABundle []byte `json:"caBundle"`
		} `json:"clientConfig"`
	} `json:"webhooks"`
}

// publish adds caPEM to every webhook's caBundle of the configuration,
// dropping expired CAs and keeping every other: the other replicas' CAs,
// and this replica's previous one, whose leaf may still be served. The
// patch tests the resourceVersion, so replicas publishing at once do not
// drop each other's CA: the loser retries on the new bundle.
func (c *Certs) publish(ctx context.Context, caPEM []byte) error {
	raw, err := c.cfg.Client.GetWebhookConfiguration(ctx, c.cfg.WebhookConfiguration)
	if err != nil {
		return fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", c.cfg.WebhookConfiguration, err)
	}
	var wc webhookConfiguration
	if err := json.Unmarshal(raw, &wc); err != nil {
		return fmt.Errorf("decoding MutatingWebhookConfiguration %s: %w", c.cfg.WebhookConfiguration, err)
	}
	if len(wc.Webhooks) == 0 {
		return fmt.Errorf("MutatingWebhookConfiguration %s has no webhooks", c.cfg.WebhookConfiguration)
	}
	patch := []map[string]any{{"op": "test", "path": "/metadata/resourceVersion", "value": wc.Metadata.ResourceVersion}}
	for i, w := range wc.Webhooks {
		bundle := MergeBundle(w.ClientConfig.CABundle, caPEM, c.cfg.Clock.Now())
		patch = append(patch,
			map[string]any{"op": "test", "path": fmt.Sprintf("/webhooks/%d/name", i), "value": w.Name},
			map[string]any{"op": "add", "path": fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), "value": base64.StdEncoding.EncodeToString(bundle)})
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	if err := c.cfg.Client.PatchWebhookConfiguration(ctx, c.cfg.WebhookConfiguration, body); err != nil {
		return fmt.Errorf("patching the caBundle of MutatingWebhookConfiguration %s: %w", c.cfg.WebhookConfiguration, err)
	}
	return nil
}

// maxBundle bounds the CAs a bundle keeps: each replica start adds one
// that stays until it expires. The ones expiring first go.
const maxBundle = 32

// MergeBundle returns bundle (PEM) with ca added, expired or unparsable
// certificates dropped, and at most maxBundle certificates kept (ca always).
func MergeBundle(bundle, ca []byte, now time.Time) []byte {
	var keep []*x509.Certificate
	seen := map[string]bool{}
	add := func(b []byte) {
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				return
			}
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil || blk.Type != "CERTIFICATE" || !now.Before(cert.NotAfter) || seen[string(cert.Raw)] {
				continue
			}
			seen[string(cert.Raw)] = true
			keep = append(keep, cert)
		}
	}
	add(ca)
	add(bundle)
	if len(keep) > maxBundle {
		// keep[0] is ca; of the rest, those that live longest.
		rest := keep[1:]
		for i := 1; i < len(rest); i++ {
			for j := i; j > 0 && rest[j].NotAfter.After(rest[j-1].NotAfter); j-- {
				rest[j], rest[j-1] = rest[j-1], rest[j]
			}
		}
		keep = keep[:maxBundle]
	}
	var out []byte
	for _, c := range keep {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// reloadFiles reads CertFile and KeyFile when they changed, at most once a
// second.
func (c *Certs) reloadFiles() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock.Now()
	if now.Before(c.fileNext) {
		return nil
	}
	c.fileNext = now.Add(time.Second)
	st, err := os.Stat(c.cfg.CertFile)
	if err != nil {
		return fmt.Errorf("reading serving certificate: %w", err)
	}
	if st.ModTime().Equal(c.fileMod) && c.current.Load() != nil {
		return nil
	}
	pair, err := tls.LoadX509KeyPair(c.cfg.CertFile, c.cfg.KeyFile)
	if err != nil {
		c.cfg.Logger.Warn("loading the serving certificate failed; keeping the previous one", "error", err)
		return fmt.Errorf("loading serving certificate: %w", err)
	}
	if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err == nil {
		c.cfg.Metrics.certExpiry.Set(float64(leaf.NotAfter.Unix()))
	}
	c.fileMod = st.ModTime()
	c.current.Store(&pair)
	c.cfg.Metrics.rotations.Inc()
	c.cfg.Metrics.caPublished.Set(1)
	return nil
}
