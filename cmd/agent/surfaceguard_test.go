package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/compute/metadata"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
	"github.com/credbroker/agent/pkg/guard"
)

// The tests in this file run every surface behind the guards exactly as
// serve wires them (flags parsed by parseServeFlags, newGuards, surfaces,
// the credential server), with fakes only for the pod resolver, the
// Kubernetes API and the clouds, and real clients on loopback (the caller
// is podApp, 127.0.0.1).

const (
	sgIdentityHeader = "pods-send-this"
	sgClientID       = "6f1a8c1e-0d6b-4c55-9d1e-3f2b7a9c4e10"
	sgEmail          = "cart@proj.iam.gserviceaccount.com"
	sgAudience       = "https://svc.example/orders"
)

// surfaceFlags turn on every surface; extra flags follow.
func surfaceFlags(extra ...string) []string {
	return append([]string{"--node-name=n", "--sts-endpoint=http://127.0.0.1:1",
		"--gcp-workload-identity-provider=projects/123/locations/global/workloadIdentityPools/pool/providers/prov",
		"--gcp-project-id=proj",
		"--azure-tenant-id=72f988bf-86f1-41af-91ab-2d7cd011db47", "--azure-identity-header=" + sgIdentityHeader,
		"--token-audience-prefix=https://svc.example/",
	}, extra...)
}

// cloudsExchanger answers every cloud: AWS keys named after the pod, and
// access tokens naming what they were asked for.
type cloudsExchanger struct{}

func (cloudsExchanger) Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error) {
	if req.Want != exchange.KindAccessToken {
		return fakeExchanger{}.Exchange(ctx, req)
	}
	return exchange.Credentials{Kind: exchange.KindAccessToken, TokenType: "Bearer",
		AccessToken: exchange.Secret("ACCESSTOKEN-" + req.Role + "-" + strings.Join(req.Scopes, ",")),
		Expiration:  time.Now().Add(time.Hour)}, nil
}

// surfaceStack serves all surfaces, parsed from args, on a loopback port.
func surfaceStack(t *testing.T, args []string) string {
	t.Helper()
	cfg := mustParse(t, args...)
	kc := fakeKube(t)
	sa, err := kc.CoreV1().ServiceAccounts("shop").Get(context.Background(), "cart", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sa.Annotations[cfg.gcp.annotation] = sgEmail
	sa.Annotations[cfg.azure.clientAnnotation] = sgClientID
	sa.Annotations[cfg.podToken.annotation] = "https://svc.example/*"
	if _, err := kc.CoreV1().ServiceAccounts("shop").Update(context.Background(), sa, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	gcpCloud, azureCloud := googleAndAzure(t, cfg)
	gcpCloud.Exchanger, azureCloud.Exchanger = cloudsExchanger{}, cloudsExchanger{}
	clouds := []broker.Cloud{awsexchange.Profile(awsexchange.ProfileConfig{Exchanger: cloudsExchanger{}}), gcpCloud, azureCloud}
	podTokens, err := cfg.podToken.cloud(clouds, nil)
	if err != nil {
		t.Fatal(err)
	}
	clouds = append(clouds, podTokens)
	reg := prometheus.NewRegistry()
	grd, err := newGuards(cfg.guard, reg, slog.DiscardHandler)
	if err != nil {
		t.Fatal(err)
	}
	bcfg := cfg.broker // as serve builds it
	bcfg.ServiceAccounts, bcfg.Resolver, bcfg.Clouds = kubetest.ServiceAccounts(kc), fakeResolver(), clouds
	bcfg.Registerer, bcfg.Logger = reg, grd.brokerLogger()
	brk, err := broker.New(bcfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := surfaces(tracedBroker{Broker: brk}, grd, surfaceClouds(cfg.gcp, cfg.azure, cfg.podToken))
	if err != nil {
		t.Fatal(err)
	}
	srv := newCredentialServer(h, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = brk.Run(ctx) })
	wg.Go(func() { _ = grd.logs.Run(ctx) })
	wg.Go(func() { _ = srv.Serve(grd.listener(ln)) })
	t.Cleanup(func() {
		_ = srv.Close()
		cancel()
		wg.Wait()
	})
	if !waitUntil(context.Background(), brk.HasSynced, 10*time.Second) {
		t.Fatal("the broker's ServiceAccount watch did not sync")
	}
	return ln.Addr().String()
}

// get sends one request from podApp and reads the answer.
func get(t *testing.T, addr, target string, hdr map[string]string) *http.Response {
	t.Helper()
	return getFrom(t, podApp, addr, target, hdr)
}

// getFrom sends one request from the pod address from, on a connection of
// its own, and reads the answer.
func getFrom(t *testing.T, from, addr, target string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	conn := dial(t, from, addr)
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// --require-authorization is the AWS SDKs' opt-in: it must not reach the
// GCE, Azure and pod-token surfaces, whose clients never send
// Authorization. Each real client gets its token with the flag on, and the
// AWS surface still demands the header.
func TestRequireAuthorizationIsTheAWSSurfacesOnly(t *testing.T) {
	// Fetches are not what is tested: the clients together cause more
	// than a pod's default fetch budget (the Node clients ask for identity
	// tokens and several client IDs).
	addr := surfaceStack(t, surfaceFlags("--require-authorization", "--pod-fetch-burst=1000"))
	gceToken := "ACCESSTOKEN-" + sgEmail + "-https://www.googleapis.com/auth/cloud-platform"

	t.Run("aws", func(t *testing.T) {
		if resp := get(t, addr, "/v1/credentials", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("no Authorization: %d, want 401", resp.StatusCode)
		} else if body := readBody(t, resp); !strings.Contains(body, `"code":"`+guard.CodeUnauthorized+`"`) || !strings.Contains(body, `"Code":"`+guard.CodeUnauthorized+`"`) {
			t.Errorf("401 body %q, want the container-credentials error JSON", body)
		}
		if resp := get(t, addr, "/v1/credentials", map[string]string{"Authorization": "x"}); resp.StatusCode != http.StatusOK {
			t.Errorf("with Authorization: %d %s", resp.StatusCode, readBody(t, resp))
		}
	})

	t.Run("gce-go", func(t *testing.T) {
		var d net.Dialer
		c := metadata.NewClient(&http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		}})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if email, err := c.EmailWithContext(ctx, "default"); err != nil || email != sgEmail {
			t.Errorf("Email = %q, %v", email, err)
		}
		if tok, err := c.GetWithContext(ctx, "instance/service-accounts/default/token"); err != nil || !strings.Contains(tok, `"access_token":"`+gceToken+`"`) {
			t.Errorf("token = %q, %v", tok, err)
		}
	})

	t.Run("gce-python", func(t *testing.T) {
		const gcloudThirdParty = "/usr/lib/google-cloud-sdk/lib/third_party"
		if _, err := os.Stat(gcloudThirdParty + "/google/auth"); err != nil {
			skipOrFail(t, "the Google Cloud CLI's google-auth is missing: %v", err)
		}
		// google.auth.default() first detects GCE with a bare GET / (no
		// Authorization): a 401 there made it decide it is not on GCE.
		out := runClient(t, []string{"python3", "-c", `
import json, google.auth, google.auth.transport.requests as tr
from google.auth.compute_engine import _metadata
req = tr.Request()
on_gce = _metadata.is_on_gce(req)
creds, project = google.auth.default()
creds.refresh(req)
print(json.dumps({"on_gce": on_gce, "project": project, "token": creds.token}))
`}, "PYTHONPATH="+gcloudThirdParty, "GCE_METADATA_HOST="+addr, "GCE_METADATA_IP="+addr)
		var got struct {
			OnGCE          bool `json:"on_gce"`
			Project, Token string
		}
		if err := json.Unmarshal(out, &got); err != nil || !got.OnGCE || got.Project != "proj" || got.Token != gceToken {
			t.Errorf("google-auth: %s (%v)", out, err)
		}
	})

	t.Run("gce-node", func(t *testing.T) {
		dir := filepath.Join("..", "..", "integration", "sdk", "js-gcp")
		needNodeModules(t, dir, "google-auth-library")
		out := runClient(t, []string{"node", filepath.Join(dir, "gcp-auth.mjs")}, "GCE_METADATA_HOST="+addr, "GCE_METADATA_IP="+addr)
		var got struct{ Token, ProjectID string }
		if err := json.Unmarshal(out, &got); err != nil || got.Token != gceToken || got.ProjectID != "proj" {
			t.Errorf("google-auth-library: %s (%v)", out, err)
		}
	})

	azureEnv := []string{"IDENTITY_ENDPOINT=http://" + addr + "/metadata/identity/oauth2/token", "IDENTITY_HEADER=" + sgIdentityHeader}
	azureToken := func(res string) string { return "ACCESSTOKEN-" + sgClientID + "-" + res }

	t.Run("azure-go", func(t *testing.T) {
		for _, kv := range azureEnv {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		for _, k := range []string{"MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID"} {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
		cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
			ClientOptions: policy.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// A resource no other test asks for: MSAL Go caches tokens process-wide.
		res := "https://surfaceguard-go.test.example"
		if tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{res + "/.default"}}); err != nil || tok.Token != azureToken(res) {
			t.Errorf("azidentity: %q, %v", tok.Token, err)
		}
	})

	t.Run("azure-python", func(t *testing.T) {
		py := "/usr/bin/python3" // Debian's python3-azure
		if exec.Command(py, "-c", "import azure.identity").Run() != nil {
			skipOrFail(t, "azure-identity for Python is not installed (apt-get install python3-azure)")
		}
		res := "https://vault.azure.net"
		out := runClient(t, []string{py, "-c", `
import json
from azure.identity import ManagedIdentityCredential
print(json.dumps({"token": ManagedIdentityCredential().get_token("` + res + `/.default").token}))
`}, azureEnv...)
		var got struct{ Token string }
		if err := json.Unmarshal(out, &got); err != nil || got.Token != azureToken(res) {
			t.Errorf("azure-identity: %s (%v)", out, err)
		}
	})

	t.Run("azure-node", func(t *testing.T) {
		dir := filepath.Join("..", "..", "integration", "sdk", "js-azure")
		needNodeModules(t, dir, "@azure/identity")
		res := "https://surfaceguard-node.test.example"
		out := runClient(t, []string{"node", filepath.Join(dir, "azure-identity.mjs"), res, sgClientID, sgClientID}, azureEnv...)
		var got struct{ Mi struct{ Token, Error string } }
		if err := json.Unmarshal(out, &got); err != nil || got.Mi.Token != azureToken(res) {
			t.Errorf("@azure/identity: %s (%v)", out, err)
		}
	})

	t.Run("podtoken", func(t *testing.T) {
		resp := get(t, addr, "/v1/token?audience="+sgAudience, nil)
		var got struct{ Token string }
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || got.Token != "SATOKEN-"+string(testPods[podApp].UID) {
			t.Errorf("pod token without Authorization: %d %q", resp.StatusCode, body)
		}
	})
}

// Every refusal the guard makes is written in its surface's format: a
// client reads the guard's 429 as it reads the surface's own (Node's
// gcp-metadata rejects any answer without Metadata-Flavor: Google;
// azidentity and azure-identity read {"error","error_description"}). And a
// pod has one request budget across the surfaces.
func TestGuardRefusalsSpeakEachSurfacesFormat(t *testing.T) {
	// One request per address, then 429 for a very long while.
	addr := surfaceStack(t, surfaceFlags("--require-authorization", "--pod-request-burst=1", "--pod-request-qps=0.0001"))
	azureHdr := map[string]string{"X-Identity-Header": sgIdentityHeader}
	gceHdr := map[string]string{"Metadata-Flavor": "Google"}
	if resp := get(t, addr, "/", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / within the budget: %d", resp.StatusCode)
	}
	check := func(name string, resp *http.Response, wantType string, body func(string) bool) {
		t.Helper()
		b := readBody(t, resp)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), wantType) || !body(b) {
			t.Errorf("%s: %d %v %q", name, resp.StatusCode, resp.Header, b)
		}
		if (resp.Header.Get("Metadata-Flavor") == "Google") != (name == "gce") {
			t.Errorf("%s: Metadata-Flavor %q", name, resp.Header.Get("Metadata-Flavor"))
		}
	}
	// The budget went on GET /: every surface now refuses this pod.
	check("gce", get(t, addr, "/computeMetadata/v1/instance/service-accounts/default/token", gceHdr), "text/plain", func(b string) bool {
		return strings.HasPrefix(b, guard.CodeRateLimited+": ")
	})
	check("azure", get(t, addr, "/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https://vault.azure.net", azureHdr), "application/json", func(b string) bool {
		var e map[string]string
		return json.Unmarshal([]byte(b), &e) == nil && e["error"] == guard.CodeRateLimited && e["error_description"] != ""
	})
	check("podtoken", get(t, addr, "/v1/token?audience="+sgAudience, nil), "application/json", func(b string) bool {
		var e map[string]string
		return json.Unmarshal([]byte(b), &e) == nil && e["code"] == guard.CodeRateLimited && e["message"] != "" && e["Code"] == ""
	})
	check("aws", get(t, addr, "/v1/credentials", map[string]string{"Authorization": "x"}), "application/json", func(b string) bool {
		var e map[string]string
		return json.Unmarshal([]byte(b), &e) == nil && e["code"] == guard.CodeRateLimited && e["Code"] == guard.CodeRateLimited
	})

	// The forwarded-request refusal (400) too, from other addresses, each
	// with its budget of one.
	for _, c := range []struct {
		from, target, wantType string
		hdr                    map[string]string
		body                   func(string) bool
	}{
		{podOther, "/computeMetadata/v1/project/project-id", "text/plain", gceHdr, func(b string) bool { return strings.HasPrefix(b, guard.CodeForwarded+": ") }},
		{podDefault, "/metadata/identity/oauth2/token?resource=r", "application/json", azureHdr, func(b string) bool { return strings.Contains(b, `"error":"`+guard.CodeForwarded+`"`) }},
		{podIdler, "/v1/token?audience=" + sgAudience, "application/json", nil, func(b string) bool { return strings.Contains(b, `{"code":"`+guard.CodeForwarded+`"`) }},
	} {
		hdr := maps.Clone(c.hdr)
		if hdr == nil {
			hdr = map[string]string{}
		}
		hdr["X-Forwarded-For"] = "10.0.0.9"
		resp := getFrom(t, c.from, addr, c.target, hdr)
		b := readBody(t, resp)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.wantType) || !c.body(b) {
			t.Errorf("%s forwarded: %d %v %q", c.target, resp.StatusCode, resp.Header, b)
		}
	}
}

func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

func needNodeModules(t *testing.T, dir, module string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	_, errNode := exec.LookPath("node")
	_, errMod := os.Stat(filepath.Join(dir, "node_modules", module))
	if errNode != nil || errMod != nil {
		skipOrFail(t, "node or %s's node_modules (npm ci there) missing: %v, %v", dir, errNode, errMod)
	}
}

// runClient runs a client program with an empty home and no proxy or
// cloud configuration, plus env, and returns its standard output.
func runClient(t *testing.T, argv []string, env ...string) []byte {
	t.Helper()
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "CLOUDSDK_CONFIG=" + t.TempDir(),
		"AZURE_CONFIG_DIR=" + t.TempDir()}, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", argv[0], err, stderr.String())
	}
	return out
}
