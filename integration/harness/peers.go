package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/entra"
	"github.com/credbroker/agent/integration/googlests"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/peer"
)

// Moto is a moto_server: STS, IAM and S3 on one port. Unlike oidcsts it can
// check SigV4 signatures (EnforceAuth), so a signed S3 call proves that the
// credentials a pod got are the ones STS issued.
type Moto struct {
	// URL is http://host:port.
	URL     string
	Process *Process
}

// MotoConfig configures StartMoto.
type MotoConfig struct {
	// Dir receives moto's log. Required.
	Dir string
	// Host is the address to listen on. Pods reach the host through their
	// gateway, so use an address on the host that is not loopback, such as
	// the link-local service address, when pods must call it. Default
	// 127.0.0.1.
	Host string
}

// StartMoto starts moto_server and waits until it answers.
func StartMoto(ctx context.Context, cfg MotoConfig) (*Moto, error) {
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return nil, fmt.Errorf("%w: moto_server (pip package moto[server])", ErrNotFound)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	env := append(os.Environ(), "MOTO_ALLOW_NONEXISTENT_REGION=true")
	m := &Moto{}
	err = withFreshPorts([]string{cfg.Host}, func(ports []int) (*Process, error) {
		p, err := StartProcess("moto", filepath.Join(cfg.Dir, "logs/moto.log"), env, bin, "-H", cfg.Host, "-p", strconv.Itoa(ports[0]))
		if err != nil {
			return nil, err
		}
		m.URL, m.Process = "http://"+net.JoinHostPort(cfg.Host, strconv.Itoa(ports[0])), p
		return p, m.waitReady(ctx)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Moto) waitReady(ctx context.Context) error {
	err := waitFor(ctx, m.Process, 60*time.Second, 100*time.Millisecond, func(ctx context.Context) (bool, string) {
		if err := m.post(ctx, "/moto-api/reset", "", nil); err != nil {
			return false, err.Error()
		}
		// moto loads each service on its first request, which takes
		// seconds on a busy machine; do it now for STS rather than in
		// the agent's first, time-limited, exchange.
		warm := url.Values{"Action": {"GetCallerIdentity"}, "Version": {"2011-06-15"}}
		_ = m.do(ctx, http.MethodPost, "/", strings.NewReader(warm.Encode()), http.Header{
			"Content-Type":  {"application/x-www-form-urlencoded"},
			"Authorization": {"AWS4-HMAC-SHA256 Credential=AKIDHARNESS/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0"},
		})
		return true, ""
	})
	if err != nil {
		m.Process.Stop(5 * time.Second)
	}
	return err
}

// Stop stops moto.
func (m *Moto) Stop() { m.Process.Stop(5 * time.Second) }

// CreateRole creates an IAM role that allows every action on every
// resource (moto authorizes signed calls by the role's policies) and returns
// its ARN. Call it before EnforceAuth: it is unsigned.
func (m *Moto) CreateRole(ctx context.Context, name string) (string, error) {
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"*"},"Action":"sts:AssumeRoleWithWebIdentity"}]}`
	if err := m.iam(ctx, url.Values{"Action": {"CreateRole"}, "RoleName": {name}, "AssumeRolePolicyDocument": {trust}, "MaxSessionDuration": {"43200"}}); err != nil {
		return "", err
	}
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`
	if err := m.iam(ctx, url.Values{"Action": {"PutRolePolicy"}, "RoleName": {name}, "PolicyName": {"all"}, "PolicyDocument": {policy}}); err != nil {
		return "", err
	}
	return "arn:aws:iam::" + oidcsts.DefaultAccountID + ":role/" + name, nil
}

// iam sends an IAM Query call. moto routes by the service in the
// Authorization header's credential scope, so the call carries a dummy one.
func (m *Moto) iam(ctx context.Context, v url.Values) error {
	v.Set("Version", "2010-05-08")
	hdr := http.Header{
		"Content-Type":  {"application/x-www-form-urlencoded"},
		"Authorization": {"AWS4-HMAC-SHA256 Credential=AKIDHARNESS/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0"},
	}
	return m.do(ctx, http.MethodPost, "/", strings.NewReader(v.Encode()), hdr)
}

// CreateBucket creates an S3 bucket (unsigned: call before EnforceAuth).
func (m *Moto) CreateBucket(ctx context.Context, name string) error {
	return m.do(ctx, http.MethodPut, "/"+name, nil, nil)
}

// EnforceAuth makes moto check signatures on every request after the next
// allowance requests (all services at once). Unsigned calls after that fail,
// including AssumeRoleWithWebIdentity, which is unsigned by design: leave an
// allowance for each one the agent will make.
func (m *Moto) EnforceAuth(ctx context.Context, allowance int) error {
	return m.post(ctx, "/moto-api/reset-auth", strconv.Itoa(allowance), http.Header{"Content-Type": {"text/plain"}})
}

func (m *Moto) post(ctx context.Context, path, body string, hdr http.Header) error {
	return m.do(ctx, http.MethodPost, path, strings.NewReader(body), hdr)
}

func (m *Moto) do(ctx context.Context, method, path string, body io.Reader, hdr http.Header) error {
	req, err := http.NewRequestWithContext(ctx, method, m.URL+path, body)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("moto %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("moto %s %s: %s: %s", method, path, resp.Status, b)
	}
	return nil
}

// STSConfig configures StartSTS.
type STSConfig struct {
	// Addr is host:port to listen on; port 0 picks one. Default
	// 169.254.170.23:0 (reachable from pods and from the host).
	Addr string
	// Roles maps role ARN → trusted subject; see oidcsts.Config.
	Roles map[string]string
	// Log receives the STS's call log. Default: discard.
	Log *slog.Logger
}

// StartSTS starts an oidcsts.Server that trusts this control plane as its
// OIDC provider (discovery and JWKS fetched from the API server as the
// admin) and rejects tokens of pods that no longer exist.
func (cp *ControlPlane) StartSTS(ctx context.Context, cfg STSConfig) (*oidcsts.Server, error) {
	s, err := oidcsts.New(oidcsts.Config{
		Issuer:     cp.Issuer,
		HTTPClient: cp.AdminHTTPClient(),
		Roles:      cfg.Roles,
		Log:        cfg.Log,
		PodUID:     cp.podUID,
	})
	return started(s, err, cfg.Addr)
}

// GoogleSTSConfig configures StartGoogleSTS.
type GoogleSTSConfig struct {
	// Addr is host:port to listen on; port 0 picks one. Default
	// 169.254.170.23:0 (reachable from pods and from the host).
	Addr string
	// Provider is the workload identity provider's resource name. Default
	// googlests.DefaultProvider.
	Provider string
	// Impersonation maps service account email → principals
	// (system:serviceaccount:NS:SA) that may impersonate it.
	Impersonation map[string][]string
	// Log receives the server's call log. Default: discard.
	Log *slog.Logger
}

// StartGoogleSTS starts a googlests.Server (Google STS and IAM Credentials
// on one port) whose workload identity provider trusts this control plane
// (discovery and JWKS fetched from the API server as the admin) and that
// rejects tokens of pods that no longer exist.
func (cp *ControlPlane) StartGoogleSTS(ctx context.Context, cfg GoogleSTSConfig) (*googlests.Server, error) {
	s, err := googlests.New(googlests.Config{
		Issuer:        cp.Issuer,
		HTTPClient:    cp.AdminHTTPClient(),
		Provider:      cfg.Provider,
		Impersonation: cfg.Impersonation,
		Log:           cfg.Log,
		PodUID:        cp.podUID,
	})
	return started(s, err, cfg.Addr)
}

// EntraConfig configures StartEntra.
type EntraConfig struct {
	// Addr is host:port to listen on; port 0 picks one. Default
	// 169.254.170.23:0 (reachable from pods and from the host).
	Addr string
	// Credentials maps each application (tenant, client ID) that exists to
	// the subjects (system:serviceaccount:NS:SA) of its federated identity
	// credentials, each with this control plane's issuer and the audience
	// api://AzureADTokenExchange. Add others with Server.Allow.
	Credentials map[entra.App][]string
	// Tenants are tenants that exist without applications.
	Tenants []string
	// Resources, when set, limits the resources a scope may name.
	Resources []string
	// Log receives the server's call log. Default: discard.
	Log *slog.Logger
}

// StartEntra starts an entra.Server (an Entra ID token endpoint) that
// verifies client assertions against this control plane's keys (discovery
// and JWKS fetched from the API server as the admin) and rejects tokens of
// pods that no longer exist. Its URL() is the authority host.
func (cp *ControlPlane) StartEntra(ctx context.Context, cfg EntraConfig) (*entra.Server, error) {
	creds := make(map[entra.App][]entra.FederatedCredential, len(cfg.Credentials))
	for app, subjects := range cfg.Credentials {
		fcs := []entra.FederatedCredential{}
		for _, sub := range subjects {
			fcs = append(fcs, entra.FederatedCredential{Issuer: cp.Issuer, Subject: sub})
		}
		creds[app] = fcs
	}
	s, err := entra.New(entra.Config{
		Issuer:      cp.Issuer,
		HTTPClient:  cp.AdminHTTPClient(),
		Credentials: creds,
		Tenants:     cfg.Tenants,
		Resources:   cfg.Resources,
		Log:         cfg.Log,
		PodUID:      cp.podUID,
	})
	return started(s, err, cfg.Addr)
}

// started starts s, which New returned with err, on addr (default
// 169.254.170.23:0, reachable from pods and from the host).
func started[S interface{ Start(addr string) error }](s S, err error, addr string) (S, error) {
	var none S
	if err != nil {
		return none, err
	}
	if addr == "" {
		addr = "169.254.170.23:0"
	}
	if err := s.Start(addr); err != nil {
		return none, err
	}
	return s, nil
}

// podUID is the peers' pod-binding lookup: a pod being deleted no longer
// exists for them, as it no longer does for the agent.
func (cp *ControlPlane) podUID(ctx context.Context, namespace, name string) (string, error) {
	pod, err := cp.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && pod.DeletionTimestamp != nil) {
		return "", peer.ErrPodNotFound
	}
	if err != nil {
		return "", err
	}
	return string(pod.UID), nil
}

// AdminHTTPClient talks to the API server as the admin, for clients that
// are not client-go (OIDC discovery and JWKS).
func (cp *ControlPlane) AdminHTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CACert)
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &BearerTransport{Token: cp.AdminToken, Base: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
}

// BearerTransport adds "Authorization: Bearer Token" to every request, for
// clients of the API server that are not client-go (raw metrics, OIDC).
type BearerTransport struct {
	Token string
	Base  http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (b *BearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.Token)
	return b.Base.RoundTrip(r)
}
