package harness

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MinIO is a MinIO server: S3 and an AssumeRoleWithWebIdentity STS on one
// port, as on-premises clusters run it behind the agent's --sts-endpoint.
// Its OpenID provider is this control plane's ServiceAccount issuer, with
// a role policy: tokens whose audience is ClientID become RoleARN, in
// MinIO's own ARN partition.
type MinIO struct {
	// URL is http://host:port, the S3 and STS endpoint.
	URL string
	// RoleARN is MinIO's role for ClientID: arn:minio:iam:::role/ID.
	RoleARN string
	// RootUser and RootPassword are MinIO's admin credentials (not a
	// pod's: the tests use them only to create buckets).
	RootUser, RootPassword string
	Process                *Process
	oidc                   *http.Server
}

// MinIOConfig configures StartMinIO.
type MinIOConfig struct {
	// Binary is the minio executable. Default MinIOBinary().
	Binary string
	// Dir receives the log (logs/minio.log) and the data. Required.
	Dir string
	// Host is the address to listen on (S3, STS and the OpenID discovery
	// MinIO reads). Default 127.0.0.1.
	Host string
	// ClientID is the audience MinIO accepts (its OpenID client ID): the
	// agent's --audience. Default "minio".
	ClientID string
}

// MinIOBinary returns the MinIO binary integration/minio/build.sh built,
// or ErrNotFound with the command that builds it (a 5-minute build never
// runs under go test). CREDBROKER_MINIO_BIN overrides.
func MinIOBinary() (string, error) {
	if p := os.Getenv("CREDBROKER_MINIO_BIN"); p != "" {
		return p, nil
	}
	path, built, err := buildCheck("integration/minio/build.sh")
	if err != nil {
		return "", err
	}
	if !built {
		return path, fmt.Errorf("%w: minio is not built yet (%s); run integration/minio/build.sh", ErrNotFound, path)
	}
	return path, nil
}

// MinIORoleARN is the role MinIO derives for a role-policy OpenID provider
// of client ID clientID in a deployment without a region: its resource is
// the unpadded base64url SHA-1 of the client ID (minio
// internal/config/identity/openid).
func MinIORoleARN(clientID string) string {
	sum := sha1.Sum([]byte(clientID))
	return "arn:minio:iam:::role/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// StartMinIO starts MinIO with this control plane as its OpenID provider
// and waits until it answers. MinIO reads the discovery document and the
// keys over plain HTTP from a small server here, which relays the API
// server's keys (fetched as the admin: the API server serves them only to
// authenticated callers); MinIO does not compare the discovery URL with
// the tokens' issuer, and verifies each token's signature with the relayed
// keys and its audience against ClientID.
func (cp *ControlPlane) StartMinIO(ctx context.Context, cfg MinIOConfig) (*MinIO, error) {
	if cfg.Binary == "" {
		bin, err := MinIOBinary()
		if err != nil {
			return nil, err
		}
		cfg.Binary = bin
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "minio"
	}
	discovery, err := cp.startOIDCRelay(cfg.Host)
	if err != nil {
		return nil, err
	}
	m := &MinIO{RoleARN: MinIORoleARN(cfg.ClientID), RootUser: "credbroker-root", RootPassword: "root-" + randomHex(12), oidc: discovery.srv}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + cfg.Dir,
		"MINIO_ROOT_USER=" + m.RootUser,
		"MINIO_ROOT_PASSWORD=" + m.RootPassword,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_IDENTITY_OPENID_CONFIG_URL=" + discovery.url,
		"MINIO_IDENTITY_OPENID_CLIENT_ID=" + cfg.ClientID,
		"MINIO_IDENTITY_OPENID_ROLE_POLICY=readwrite",
	}
	data := filepath.Join(cfg.Dir, "minio-data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		m.Stop()
		return nil, err
	}
	err = withFreshPorts([]string{cfg.Host, "127.0.0.1"}, func(ports []int) (*Process, error) {
		addr := net.JoinHostPort(cfg.Host, strconv.Itoa(ports[0]))
		m.URL = "http://" + addr
		p, err := StartProcess("minio", filepath.Join(cfg.Dir, "logs/minio.log"), env, cfg.Binary,
			"server", data, "--address", addr, "--console-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])), "--quiet")
		if err != nil {
			return nil, err
		}
		m.Process = p
		return p, m.waitReady(ctx)
	})
	if err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

func (m *MinIO) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return waitFor(ctx, m.Process, 60*time.Second, 200*time.Millisecond, func(context.Context) (bool, string) {
		return status200(client.Get(m.URL + "/minio/health/ready"))
	})
}

// Stop stops MinIO and the discovery relay.
func (m *MinIO) Stop() {
	if m.Process != nil {
		m.Process.Stop(5 * time.Second)
	}
	if m.oidc != nil {
		_ = m.oidc.Close()
	}
}

type oidcRelay struct {
	srv *http.Server
	url string // the discovery document's URL
}

// startOIDCRelay serves the issuer's discovery document, pointing at its
// own /keys, and relays the API server's JWKS there on every request.
func (cp *ControlPlane) startOIDCRelay(host string) (*oidcRelay, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	base := "http://" + ln.Addr().String()
	admin := cp.AdminHTTPClient()
	get := func(ctx context.Context, u string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := admin.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		return b, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		b, err := get(r.Context(), strings.TrimSuffix(cp.Issuer, "/")+"/.well-known/openid-configuration")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		doc["jwks_uri"] = base + "/keys"
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(doc)
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		b, err := get(r.Context(), strings.TrimSuffix(cp.Issuer, "/")+"/openid/v1/jwks")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &oidcRelay{srv: srv, url: base + "/.well-known/openid-configuration"}, nil
}
