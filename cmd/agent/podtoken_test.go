package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/broker"
)

// fakeAPIServer serves the ServiceAccount issuer discovery document with
// issuer, after failing the first failFirst requests with 503; status,
// when set, answers every request instead.
type fakeAPIServer struct {
	issuer    string
	failFirst int32
	status    int
	requests  atomic.Int32
}

func (f *fakeAPIServer) start(t *testing.T) *rest.Config {
	t.Helper()
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.requests.Add(1)
		switch {
		case r.URL.Path != "/.well-known/openid-configuration":
			http.NotFound(w, r)
		case f.status != 0:
			w.WriteHeader(f.status)
		case n <= f.failFirst:
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"issuer": f.issuer, "jwks_uri": f.issuer + "/openid/v1/jwks"})
		}
	}))
	t.Cleanup(ts.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	return &rest.Config{Host: ts.URL, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
}

// unsignedJWT is a token whose payload has aud; nothing checks its
// signature here.
func unsignedJWT(aud any) string {
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	return enc(map[string]string{"alg": "RS256"}) + "." + enc(map[string]any{"aud": aud, "sub": "system:serviceaccount:credbroker-system:credbroker-agent"}) + ".c2ln"
}

func testClouds(t *testing.T) []broker.Cloud {
	t.Helper()
	cfg := mustParse(t, surfaceFlags()...)
	awsCloud, err := cfg.awsConfig.cloud()
	if err != nil {
		t.Fatal(err)
	}
	gcpCloud, azureCloud := googleAndAzure(t, cfg)
	return []broker.Cloud{awsCloud, gcpCloud, azureCloud}
}

// googleAndAzure returns the GCP and Azure clouds cfg configures.
func googleAndAzure(t *testing.T, cfg serveConfig) (gcpCloud, azureCloud broker.Cloud) {
	t.Helper()
	gcpCloud, err := cfg.gcp.cloud()
	if err != nil {
		t.Fatal(err)
	}
	if azureCloud, err = cfg.azure.cloud(); err != nil {
		t.Fatal(err)
	}
	return gcpCloud, azureCloud
}

// The prefix is checked against the API server's audiences, read from it:
// the issuer of its discovery document (the default --api-audiences) and
// the audiences of the agent's own ServiceAccount token (such as
// https://kubernetes.default.svc, which discovery does not name).
func TestTokenAudiencePrefixAgainstTheAPIServer(t *testing.T) {
	const issuer = "https://kubernetes.default.svc.cluster.local"
	clouds := testClouds(t)
	ctx := context.Background()
	for _, c := range []struct {
		name, prefix string
		token        any // the aud claim of the agent's token; nil: no token
		file         bool
		refused      string // in the error; "" when accepted
	}{
		{"issuer", "https://kubernetes.default.svc.cluster.", nil, false, issuer},
		{"issuer, trailing slash", issuer + "/", nil, false, issuer},
		{"token audience", "https://kubernetes.default.svc", []string{"https://kubernetes.default.svc", issuer}, false, `"https://kubernetes.default.svc" (the Kubernetes API server's audience)`},
		{"token audience from the token file", "https://api.internal", "https://api.internal.example", true, "https://api.internal.example"},
		{"service prefix", "https://svc.example/", []string{"https://kubernetes.default.svc", issuer}, true, ""},
		{"longer than the issuer", issuer + "/services/", nil, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			api := &fakeAPIServer{issuer: issuer}
			rc := api.start(t)
			if c.token != nil {
				rc.BearerToken = unsignedJWT(c.token)
				if c.file {
					rc.BearerTokenFile = filepath.Join(t.TempDir(), "token")
					if err := os.WriteFile(rc.BearerTokenFile, []byte(rc.BearerToken+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					rc.BearerToken = ""
				}
			}
			p := podTokenConfig{prefix: c.prefix, annotation: "credbroker.io/token-audiences"}
			cloud, err := p.startCloud(ctx, rc, clouds)
			if c.refused != "" {
				if err == nil || !strings.Contains(err.Error(), c.refused) || !strings.Contains(err.Error(), "--token-audience-prefix") {
					t.Fatalf("%v, want a refusal naming %s", err, c.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Accepted: the API server's audiences are reserved as well,
			// under every spelling.
			for _, a := range []string{issuer, issuer + "/", "https://kubernetes.default.svc/", "https://storage.googleapis.com"} {
				want := !strings.Contains(a, "storage")
				if c.token == nil && strings.Contains(a, "default.svc/") {
					want = false
				}
				if got := reservedAudience(cloud, a); got != want {
					t.Errorf("ReservedAudience(%q) = %v, want %v", a, got, want)
				}
			}
		})
	}
}

// A prefix covering a cloud's audience is refused before the API server
// is asked anything; discovery failures are retried when transient and
// reported when not.
func TestTokenAudiencePrefixStartFailures(t *testing.T) {
	clouds := testClouds(t)
	ctx := context.Background()
	api := &fakeAPIServer{issuer: "https://issuer.example"}
	rc := api.start(t)
	for _, prefix := range []string{"https://", "https://iam.googleapis.com/", "api://", "sts."} {
		p := podTokenConfig{prefix: prefix, annotation: "a"}
		if _, err := p.startCloud(ctx, rc, clouds); err == nil || !strings.Contains(err.Error(), "exchange's") {
			t.Errorf("%q: %v, want a refusal naming a cloud's exchange audience", prefix, err)
		}
	}
	if n := api.requests.Load(); n != 0 {
		t.Errorf("%d requests to the API server for prefixes refused without one", n)
	}

	p := podTokenConfig{prefix: "https://svc.example/", annotation: "a"}
	flaky := &fakeAPIServer{issuer: "https://issuer.example", failFirst: 1}
	if _, err := p.startCloud(ctx, flaky.start(t), clouds); err != nil || flaky.requests.Load() != 2 {
		t.Errorf("after a 503: %v, %d requests", err, flaky.requests.Load())
	}
	forbidden := &fakeAPIServer{status: http.StatusForbidden}
	if _, err := p.startCloud(ctx, forbidden.start(t), clouds); err == nil || !strings.Contains(err.Error(), "system:service-account-issuer-discovery") ||
		forbidden.requests.Load() != 1 {
		t.Errorf("403: %v after %d requests, want one request and an error naming the role", err, forbidden.requests.Load())
	}
}

// reservedAudience reports whether the pod-token cloud refuses aud as
// another's, whatever the ServiceAccount lists.
func reservedAudience(c broker.Cloud, aud string) bool {
	err := c.Check("ns", "sa", "*", aud)
	return err != nil && strings.Contains(err.Error(), "never handed out")
}
