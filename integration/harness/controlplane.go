package harness

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ControlPlaneConfig configures StartControlPlane.
type ControlPlaneConfig struct {
	// Dir holds everything: etcd's data, keys, certificates, kubeconfigs and
	// logs. Required; typically t.TempDir().
	Dir string
	// BinDir holds kube-apiserver and etcd. Default: K8sBinDir().
	BinDir string
	// ExtraAPIServerFlags are appended to kube-apiserver's flags (a later
	// flag wins), e.g. "--enable-admission-plugins=...".
	ExtraAPIServerFlags []string
	// ReadyTimeout bounds the wait for /readyz. Default 60s.
	ReadyTimeout time.Duration
	// AuthorizationModes is --authorization-mode. Default "RBAC"; a real
	// node (integration/node) needs "Node,RBAC".
	AuthorizationModes string
	// ServiceAccountAdmission keeps the ServiceAccount admission plugin on,
	// for a cluster whose controller manager creates the default
	// ServiceAccounts and whose pods mount their tokens (integration/node).
	ServiceAccountAdmission bool
	// EtcdQuotaBytes is etcd's --quota-backend-bytes. Default 256 MiB;
	// tens of thousands of pods (integration/scale) need more.
	EtcdQuotaBytes int64
}

// ControlPlane is etcd plus kube-apiserver on 127.0.0.1. No controller
// manager, scheduler or kubelet runs: nothing creates ServiceAccounts,
// schedules or runs pods; the harness's helpers do what they would.
type ControlPlane struct {
	// URL is the API server's https URL.
	URL string
	// Issuer is the ServiceAccount token issuer (equal to URL), whose OIDC
	// discovery document and JWKS the API server serves.
	Issuer string
	// CACert is the PEM of the CA that signed the API server's certificate.
	CACert []byte
	// AdminToken authenticates as user "admin" in group system:masters.
	AdminToken string
	// AdminKubeconfig is the path of a kubeconfig for the admin.
	AdminKubeconfig string
	// Config and Client talk to the API server as the admin.
	Config *rest.Config
	Client kubernetes.Interface
	// Dir is ControlPlaneConfig.Dir.
	Dir string

	cfg      ControlPlaneConfig
	etcd     *Process
	apiArgs  []string
	mu       sync.Mutex
	api      *Process
	stopOnce sync.Once
}

// StartControlPlane starts etcd and kube-apiserver and waits until the API
// server's /readyz answers 200. On error everything started is stopped.
func StartControlPlane(ctx context.Context, cfg ControlPlaneConfig) (_ *ControlPlane, err error) {
	if cfg.Dir == "" {
		return nil, errors.New("harness: ControlPlaneConfig.Dir is required")
	}
	if cfg.BinDir == "" {
		if cfg.BinDir, err = K8sBinDir(); err != nil {
			return nil, err
		}
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	if cfg.AuthorizationModes == "" {
		cfg.AuthorizationModes = "RBAC"
	}
	if cfg.EtcdQuotaBytes == 0 {
		cfg.EtcdQuotaBytes = 256 << 20
	}
	// No controller manager creates the default ServiceAccounts the
	// ServiceAccount admission plugin insists on, unless the caller runs one.
	var admission []string
	if !cfg.ServiceAccountAdmission {
		admission = []string{"--disable-admission-plugins=ServiceAccount"}
	}
	pki := filepath.Join(cfg.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", pki, err)
	}
	cp := &ControlPlane{Dir: cfg.Dir, cfg: cfg}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()

	// Keys and certificates name no port, so they outlive a lost port race.
	ca, err := writePKI(pki)
	if err != nil {
		return nil, err
	}
	cp.CACert = ca
	cp.AdminToken = randomHex(24)
	tokenFile := filepath.Join(pki, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(cp.AdminToken+`,admin,admin-uid,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing token file: %w", err)
	}
	auditPolicy := filepath.Join(pki, "audit-policy.yaml")
	if err := os.WriteFile(auditPolicy, []byte(auditPolicyYAML), 0o600); err != nil {
		return nil, fmt.Errorf("writing audit policy: %w", err)
	}

	// etcd
	var clientURL string
	err = withFreshPorts([]string{"127.0.0.1", "127.0.0.1"}, func(ports []int) (*Process, error) {
		clientURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		// A lost attempt may have left a member with its peer URL behind.
		data := filepath.Join(cfg.Dir, "etcd")
		if err := os.RemoveAll(data); err != nil {
			return nil, fmt.Errorf("clearing %s: %w", data, err)
		}
		p, err := StartProcess("etcd", filepath.Join(cfg.Dir, "logs/etcd.log"), nil,
			filepath.Join(cfg.BinDir, "etcd"),
			"--name=default",
			"--data-dir="+data,
			"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=default="+peerURL,
			"--log-level=warn",
			// Tests churn little data; skip fsync waits and keep the WAL small.
			"--unsafe-no-fsync", "--quota-backend-bytes="+strconv.FormatInt(cfg.EtcdQuotaBytes, 10))
		if err != nil {
			return nil, err
		}
		cp.etcd = p
		return p, waitEtcd(ctx, p, clientURL, peerURL, cfg.ReadyTimeout)
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for etcd: %w", err)
	}

	// kube-apiserver: its port is in the URL, the issuer and the kubeconfig.
	err = withFreshPorts([]string{"127.0.0.1"}, func(ports []int) (*Process, error) {
		cp.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
		cp.Issuer = cp.URL
		cp.AdminKubeconfig = filepath.Join(cfg.Dir, "admin.kubeconfig")
		if err := cp.WriteKubeconfig(cp.AdminKubeconfig, "admin", cp.AdminToken); err != nil {
			return nil, err
		}
		cp.apiArgs = append([]string{
			"--etcd-servers=" + clientURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			// A loopback advertise address is refused unless nothing
			// reconciles the kubernetes Service's endpoints.
			"--endpoint-reconciler-type=none",
			"--secure-port=" + strconv.Itoa(ports[0]),
			"--cert-dir=" + pki,
			"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
			"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
			"--service-account-issuer=" + cp.Issuer,
			"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
			"--api-audiences=https://kubernetes.default.svc," + cp.Issuer,
			"--authorization-mode=" + cfg.AuthorizationModes,
			"--token-auth-file=" + tokenFile,
			"--service-cluster-ip-range=10.96.0.0/12",
			"--profiling=false",
			// Without it a graceful stop waits for open watches (the agent's
			// informer) until the process is killed; with it, watches are
			// closed after a second, as clients must cope with anyway.
			"--shutdown-watch-termination-grace-period=1s",
			"--audit-policy-file=" + auditPolicy,
			"--audit-log-path=" + cp.AuditLog(),
			"--audit-log-format=json",
			"--audit-log-mode=blocking",
		}, append(admission, cfg.ExtraAPIServerFlags...)...)
		err := cp.StartAPIServer(ctx)
		return cp.api, err
	})
	if err != nil {
		return nil, err
	}

	cp.Config = &rest.Config{
		Host:            cp.URL,
		BearerToken:     cp.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.CACert},
		QPS:             200,
		Burst:           400,
		Timeout:         30 * time.Second,
	}
	if cp.Client, err = kubernetes.NewForConfig(cp.Config); err != nil {
		return nil, fmt.Errorf("creating client: %w", err)
	}
	return cp, nil
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) with the
// same flags and port, and waits for /readyz.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.api != nil {
		if done, _ := cp.api.Exited(); !done {
			return errors.New("harness: kube-apiserver is already running")
		}
	}
	p, err := StartProcess("kube-apiserver", filepath.Join(cp.Dir, "logs/kube-apiserver.log"), nil,
		filepath.Join(cp.cfg.BinDir, "kube-apiserver"), cp.apiArgs...)
	if err != nil {
		return err
	}
	cp.api = p
	if err := cp.waitReady(ctx, p); err != nil {
		return err
	}
	return nil
}

// StopAPIServer stops kube-apiserver, leaving etcd running: clients see
// connection refused until StartAPIServer.
func (cp *ControlPlane) StopAPIServer() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.api != nil {
		cp.api.Stop(15 * time.Second)
	}
}

// RestartAPIServer stops and starts kube-apiserver.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context) error {
	cp.StopAPIServer()
	return cp.StartAPIServer(ctx)
}

// auditPolicyYAML records every TokenRequest with its request body (the
// bound object), and nothing else, so tests can count TokenRequests per pod.
const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Request
  verbs: ["create"]
  resources:
  - group: ""
    resources: ["serviceaccounts/token"]
- level: None
`

// AuditLog returns the path of the API server's audit log, which records
// every TokenRequest (see TokenRequests).
func (cp *ControlPlane) AuditLog() string { return filepath.Join(cp.Dir, "logs/audit.log") }

// TokenRequest is one TokenRequest the API server answered, from its audit log.
type TokenRequest struct {
	User string // who asked
	// ImpersonatedUser is who the request was made as, when User
	// impersonated someone (the agent's node, in node-restricted mode).
	ImpersonatedUser string
	Namespace        string // of the ServiceAccount
	ServiceAccount   string
	Code             int32 // HTTP status of the answer
	// AuthzReason is the authorizer's reason for a refusal (its audit
	// annotation), empty when the request was authorized.
	AuthzReason string
	BoundKind   string
	BoundName   string
	BoundUID    string
	Audiences   []string
}

// TokenRequests returns every TokenRequest the API server has answered so
// far, in order.
func (cp *ControlPlane) TokenRequests() ([]TokenRequest, error) {
	f, err := os.Open(cp.AuditLog())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	defer f.Close()
	var out []TokenRequest
	dec := json.NewDecoder(f)
	for {
		var ev struct {
			Stage string `json:"stage"`
			User  struct {
				Username string `json:"username"`
			} `json:"user"`
			ImpersonatedUser *struct {
				Username string `json:"username"`
			} `json:"impersonatedUser"`
			ObjectRef struct {
				Namespace   string `json:"namespace"`
				Name        string `json:"name"`
				Subresource string `json:"subresource"`
			} `json:"objectRef"`
			ResponseStatus struct {
				Code int32 `json:"code"`
			} `json:"responseStatus"`
			Annotations   map[string]string `json:"annotations"`
			RequestObject struct {
				Spec struct {
					Audiences      []string `json:"audiences"`
					BoundObjectRef *struct {
						Kind string `json:"kind"`
						Name string `json:"name"`
						UID  string `json:"uid"`
					} `json:"boundObjectRef"`
				} `json:"spec"`
			} `json:"requestObject"`
		}
		if err := dec.Decode(&ev); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("decoding audit log: %w", err)
		}
		if ev.Stage != "ResponseComplete" || ev.ObjectRef.Subresource != "token" {
			continue
		}
		tr := TokenRequest{
			User: ev.User.Username, Namespace: ev.ObjectRef.Namespace, ServiceAccount: ev.ObjectRef.Name,
			Code: ev.ResponseStatus.Code, Audiences: ev.RequestObject.Spec.Audiences,
		}
		if ev.Annotations["authorization.k8s.io/decision"] == "forbid" {
			tr.AuthzReason = ev.Annotations["authorization.k8s.io/reason"]
		}
		if ev.ImpersonatedUser != nil {
			tr.ImpersonatedUser = ev.ImpersonatedUser.Username
		}
		if b := ev.RequestObject.Spec.BoundObjectRef; b != nil {
			tr.BoundKind, tr.BoundName, tr.BoundUID = b.Kind, b.Name, b.UID
		}
		out = append(out, tr)
	}
}

// APIServerLog and EtcdLog return the paths of the processes' logs.
func (cp *ControlPlane) APIServerLog() string {
	return filepath.Join(cp.Dir, "logs/kube-apiserver.log")
}

// APIServerPID and EtcdPID are the processes' IDs (0 if not running), for
// reading their memory from /proc.
func (cp *ControlPlane) APIServerPID() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return pid(cp.api)
}

func (cp *ControlPlane) EtcdPID() int { return pid(cp.etcd) }

func pid(p *Process) int {
	if p == nil || p.Cmd.Process == nil {
		return 0
	}
	if done, _ := p.Exited(); done {
		return 0
	}
	return p.Cmd.Process.Pid
}

// EtcdLog returns the path of etcd's log.
func (cp *ControlPlane) EtcdLog() string { return filepath.Join(cp.Dir, "logs/etcd.log") }

// Stop stops kube-apiserver and etcd. It is idempotent.
func (cp *ControlPlane) Stop() {
	cp.stopOnce.Do(func() {
		cp.mu.Lock()
		api := cp.api
		cp.mu.Unlock()
		if api != nil {
			api.Stop(10 * time.Second)
		}
		if cp.etcd != nil {
			cp.etcd.Stop(10 * time.Second)
		}
	})
}

func (cp *ControlPlane) waitReady(ctx context.Context, p *Process) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CACert)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	return waitFor(ctx, p, cp.cfg.ReadyTimeout, 100*time.Millisecond, func(ctx context.Context) (bool, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cp.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.AdminToken)
		return status200(client.Do(req))
	})
}

// WriteKubeconfig writes a kubeconfig for the API server that authenticates
// with a bearer token, readable by the owner only (it holds the token).
func (cp *ControlPlane) WriteKubeconfig(path, user, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: local
  context:
    cluster: local
    user: %s
current-context: local
`, cp.URL, base64.StdEncoding.EncodeToString(cp.CACert), user, token, user)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// KubeconfigClient is a client with the credentials of the kubeconfig at
// path (one WriteKubeconfig wrote), acting as impersonate unless that is "".
func KubeconfigClient(path, impersonate string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, err
	}
	rc.Impersonate = rest.ImpersonationConfig{UserName: impersonate}
	return kubernetes.NewForConfig(rc)
}

// Kubectl runs kubectl as the admin and returns its combined output.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", cp.AdminKubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %v: %w: %s", args, err, out)
	}
	return out, nil
}

// EnsureNamespace creates a namespace unless it exists.
func (cp *ControlPlane) EnsureNamespace(ctx context.Context, name string) error {
	_, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// ServiceAccountToken asks the API server (as the admin) for a token of the
// ServiceAccount, valid for ttl, with the API server's own audiences.
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, namespace, name string, ttl time.Duration) (string, error) {
	secs := int64(ttl / time.Second)
	tr, err := cp.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// Agent identity as deploy/daemonset/rbac.yaml defines it.
const (
	AgentNamespace      = "credbroker-system"
	AgentServiceAccount = "credbroker-agent"
)

// AgentKubeconfig gives the agent exactly the identity and RBAC it has in a
// cluster: it creates the credbroker-system namespace, applies
// deploy/daemonset/rbac.yaml with kubectl, requests a token for the
// credbroker-agent ServiceAccount and writes a kubeconfig with it to path.
// rbacPath empty means <repo>/deploy/daemonset/rbac.yaml.
//
// The token is bound to nothing, so the agent cannot act as a node
// (--node-restricted=auto falls back): AgentKubeconfig also applies the
// opt-in deploy/daemonset/broad-rbac, as an operator of a cluster without
// node restriction would. integration/noderestrict gives the agent a
// pod-bound token instead.
func (cp *ControlPlane) AgentKubeconfig(ctx context.Context, rbacPath, path string) error {
	if rbacPath == "" {
		root, err := RepoRoot()
		if err != nil {
			return err
		}
		rbacPath = filepath.Join(root, "deploy/daemonset/rbac.yaml")
	}
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	return cp.serviceAccountKubeconfig(ctx, path, AgentServiceAccount, rbacPath, filepath.Join(root, "deploy/daemonset/broad-rbac/rbac.yaml"))
}

// serviceAccountKubeconfig applies manifests (in order) with kubectl, in
// AgentNamespace, requests a day's token for ServiceAccount sa there and
// writes a kubeconfig with it to path: what the agent's and the webhook's
// identities are made of, so that each runs with exactly its RBAC.
func (cp *ControlPlane) serviceAccountKubeconfig(ctx context.Context, path, sa string, manifests ...string) error {
	if err := cp.EnsureNamespace(ctx, AgentNamespace); err != nil {
		return err
	}
	for _, m := range manifests {
		if _, err := cp.Kubectl(ctx, "apply", "-f", m); err != nil {
			return fmt.Errorf("applying %s for %s: %w", m, sa, err)
		}
	}
	token, err := cp.ServiceAccountToken(ctx, AgentNamespace, sa, 24*time.Hour)
	if err != nil {
		return err
	}
	return cp.WriteKubeconfig(path, sa, token)
}

// NewCA makes a self-signed CA certificate named cn for key, valid for a
// week from an hour ago (clocks of the parts may differ a little): the
// root of a test PKI, the control plane's (writePKI) or the node suite's.
func NewCA(cn string, key crypto.Signer) (*x509.Certificate, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA %s: %w", cn, err)
	}
	return x509.ParseCertificate(der)
}

// writePKI makes a CA, an API server serving certificate for 127.0.0.1 and
// localhost, and the ServiceAccount signing key pair. It returns the CA PEM.
func writePKI(dir string) ([]byte, error) {
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	caCert, err := NewCA("credbroker-test-ca", caKey)
	if err != nil {
		return nil, err
	}
	caDER := caCert.Raw
	now := time.Now()
	srvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		// 10.96.0.1 is the kubernetes Service's IP (first of
		// --service-cluster-ip-range), which pods on a real node
		// (integration/node) use through in-cluster config.
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default.svc"},
	}, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating serving certificate: %w", err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		"ca.crt":        caPEM,
		"apiserver.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		"apiserver.key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(srvKey)}),
		"sa.key":        pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":        pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return caPEM, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// waitEtcd waits until the etcd at clientURL lists a member with peerURL:
// the client port answering is not enough, since until p binds it, it may
// be someone else's (see withFreshPorts).
func waitEtcd(ctx context.Context, p *Process, clientURL, peerURL string, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	want, _ := json.Marshal(peerURL)
	return waitFor(ctx, p, timeout, 50*time.Millisecond, func(ctx context.Context) (bool, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, clientURL+"/v3/cluster/member/list", strings.NewReader("{}"))
		resp, err := client.Do(req)
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && bytes.Contains(b, want), fmt.Sprintf("%s: %.200s", resp.Status, b)
	})
}
