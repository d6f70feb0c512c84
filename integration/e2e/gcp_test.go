//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/googlests"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
)

const (
	gcpNode      = "node-gcp"
	gcpNSPrefix  = "cbgcp"
	gcpSubnet    = "10.244.3.%d" // TestGCP's /24 (integration/README.md)
	gcpProject   = "credbroker-it"
	gcpAudience  = "https://svc.example"
	gcpScope     = googlests.CloudPlatformScope
	gcpAnnotKey  = "iam.gke.io/gcp-service-account"
	gcloudPyPath = "/usr/lib/google-cloud-sdk/lib/third_party"
	// gcpFederatedEmail is what the surface names a pod's own federated
	// principal: the workload pool's name.
	gcpFederatedEmail = gcpProject + ".svc.id.goog"
)

// gcpWorld is what TestGCP's scenarios share: a control plane, our AWS STS
// (the agent's normal AWS flags), the Google STS + IAM Credentials peer, and
// one agent serving both clouds on one listener.
type gcpWorld struct {
	*suite
	python  string
	jsDir   string // integration/sdk/js-gcp
	gcpauth string // the Go client program
	gsts    *googlests.Server
	// host is the agent's host:port, what pods put in GCE_METADATA_HOST.
	host string
}

// TestGCP runs Google's own clients inside pods against the agent's GCE
// metadata surface, backed by googlests, and checks at the peer that every
// token a client got was minted for its own pod.
func TestGCP(t *testing.T) {
	w := setupGCP(t)
	t.Run("Clients", w.testClients)
	t.Run("SecondPodOwnToken", w.testSecondPod)
	t.Run("BothClouds", w.testBothClouds)
	t.Run("DefaultServiceAccount", w.testDefaultSA)
	t.Run("ConcurrentFirstRequests", w.testConcurrentFirst)
	t.Run("PeerDown", w.testPeerDown)
	t.Run("NoTokenInLogsOrMetrics", w.testNoTokenLeaked)
}

func setupGCP(t *testing.T) *gcpWorld {
	t.Helper()
	w := &gcpWorld{suite: newSuite(t, gcpSubnet, "ip", "kubectl", "python3", "node", "gcloud")}
	w.jsDir = filepath.Join(w.root, "integration/sdk/js-gcp")
	if _, err := os.Stat(filepath.Join(w.jsDir, "node_modules/google-auth-library")); err != nil {
		testenv.Unavailable(t, "google-auth-library not installed in integration/sdk/js-gcp; run `make integration-deps`")
	}
	if _, err := os.Stat(filepath.Join(gcloudPyPath, "google/auth")); err != nil {
		testenv.Unavailable(t, "google-auth of the Google Cloud CLI not found under %s", gcloudPyPath)
	}
	w.python = strings.TrimSpace(string(must(exec.Command("python3", "-c", "import sys; print(sys.executable)").Output())))
	w.gcpauth = w.build(t, "gcpauth")

	w.start(t, gcpNode, gcpNSPrefix)
	var err error
	w.gsts, err = w.cp.StartGoogleSTS(context.Background(), harness.GoogleSTSConfig{})
	if err != nil {
		t.Fatalf("StartGoogleSTS: %v", err)
	}
	t.Cleanup(func() { w.gsts.Close() })
	w.startAgent(t, harness.AgentConfig{
		Name:     "agent-gcp",
		NodeName: gcpNode,
		ExtraArgs: []string{
			"--gcp-workload-identity-provider=" + w.gsts.Provider(),
			"--gcp-project-id=" + gcpProject,
			"--gcp-sts-endpoint=" + w.gsts.URL(),
			"--gcp-iamcredentials-endpoint=" + w.gsts.URL(),
		},
	})
	w.host = w.agent.Listen
	return w
}

func gsaEmail(name string) string { return name + "@" + gcpProject + ".iam.gserviceaccount.com" }

func principal(ns, sa string) string { return "system:serviceaccount:" + ns + ":" + sa }

// serviceAccount creates ns/name, annotated with the Google service account
// email when it is not empty; the peer then lets exactly that ServiceAccount
// impersonate it.
func (w *gcpWorld) serviceAccount(t *testing.T, ns, name, email string) {
	t.Helper()
	w.serviceAccountWith(t, ns, name, email, nil)
}

// serviceAccountWith is serviceAccount with more annotations.
func (w *gcpWorld) serviceAccountWith(t *testing.T, ns, name, email string, annotations map[string]string) {
	t.Helper()
	ctx := context.Background()
	if err := w.cp.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{}}}
	for k, v := range annotations {
		sa.Annotations[k] = v
	}
	if email != "" {
		sa.Annotations[gcpAnnotKey] = email
		w.gsts.Allow(email, principal(ns, name))
	}
	_, err := w.cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// env is a Google client's whole environment inside a pod: the metadata
// server is the agent (GCE_METADATA_HOST for the data, GCE_METADATA_IP for
// Python's detection, GCE_METADATA_ROOT for gcloud), HOME and the gcloud
// configuration are empty, and no credentials file exists.
func (w *gcpWorld) env(t *testing.T, extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + w.home,
		"CLOUDSDK_CONFIG=" + t.TempDir(),
		"CLOUDSDK_CORE_DISABLE_PROMPTS=1",
		"GCE_METADATA_HOST=" + w.host,
		"GCE_METADATA_IP=" + w.host,
		"GCE_METADATA_ROOT=" + w.host,
		"LANG=C.UTF-8",
	}
	for _, k := range []string{"PYENV_ROOT", "PYENV_VERSION"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, extra...)
}

// run runs a client inside p and returns its stdout.
func (w *gcpWorld) run(t *testing.T, p *harness.Pod, dir string, env []string, args ...string) ([]byte, error) {
	t.Helper()
	return runInPod(p, 90*time.Second, dir, env, args...)
}

// clientOut is what every client reports; fields a client does not print
// stay empty.
type clientOut struct {
	Project   string `json:"project"`
	ProjectID string `json:"projectId"` // Node's spelling
	Email     string `json:"email"`
	Token     string `json:"token"`
	IDToken   string `json:"idToken"`
	// IDError is how the client failed to get an identity token.
	IDError string `json:"idError"`
}

// Python: google.auth.default(), a token refresh, and fetch_id_token for an
// audience (argv[1], none when empty; its error reported, not raised).
const gcpPyScript = `
import json, sys, google.auth, google.auth.transport.requests as tr
from google.oauth2 import id_token
req = tr.Request()
creds, project = google.auth.default()
creds.refresh(req)
out = {"project": project, "email": creds.service_account_email, "token": creds.token, "version": google.auth.__version__}
if len(sys.argv) > 1 and sys.argv[1]:
    try:
        out["idToken"] = id_token.fetch_id_token(req, sys.argv[1])
    except Exception as e:
        out["idError"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
`

// Node without an identity token (integration/sdk/js-gcp/gcp-auth.mjs
// always asks for one): google-auth-library's access token.
const gcpNodeNoID = `
import { GoogleAuth } from 'google-auth-library';
const auth = new GoogleAuth({ scopes: ['https://www.googleapis.com/auth/cloud-platform'] });
const client = await auth.getClient();
const { token } = await client.getAccessToken();
const projectId = await auth.getProjectId();
const credentials = await auth.getCredentials();
console.log(JSON.stringify({ token, project: projectId, email: credentials.client_email }));
`

// client is one real Google client.
type client struct {
	name string
	// run runs it in p, with an identity token for idAudience unless it
	// is "" (the client's failure to get one is in IDError).
	run func(t *testing.T, p *harness.Pod, idAudience string) (clientOut, error)
}

func (w *gcpWorld) clients() []client {
	decode := func(b []byte, err error) (clientOut, error) {
		var o clientOut
		if err != nil {
			return o, err
		}
		if err := json.Unmarshal(b, &o); err != nil {
			return o, fmt.Errorf("client printed %q: %w", b, err)
		}
		return o, nil
	}
	return []client{
		{"go-metadata-oauth2", func(t *testing.T, p *harness.Pod, aud string) (clientOut, error) {
			args := []string{w.gcpauth}
			if aud != "" {
				args = append(args, "-audience="+aud)
			}
			return decode(w.run(t, p, "", w.env(t), args...))
		}},
		{"python-google-auth", func(t *testing.T, p *harness.Pod, aud string) (clientOut, error) {
			return decode(w.run(t, p, "", w.env(t, "PYTHONPATH="+gcloudPyPath), w.python, "-c", gcpPyScript, aud))
		}},
		{"gcloud", func(t *testing.T, p *harness.Pod, aud string) (clientOut, error) {
			env := w.env(t)
			b, err := w.run(t, p, "", env, "gcloud", "auth", "print-access-token")
			o := clientOut{Token: strings.TrimSpace(string(b))}
			if err != nil || aud == "" {
				return o, err
			}
			b, err = w.run(t, p, "", env, "gcloud", "auth", "print-identity-token", "--audiences="+aud)
			if err != nil {
				o.IDError = err.Error()
			}
			o.IDToken = strings.TrimSpace(string(b))
			return o, nil
		}},
		{"node-google-auth-library", func(t *testing.T, p *harness.Pod, aud string) (clientOut, error) {
			if aud == "" {
				return decode(w.run(t, p, w.jsDir, w.env(t), "node", "--input-type=module", "-e", gcpNodeNoID))
			}
			o, err := decode(w.run(t, p, w.jsDir, w.env(t), "node", filepath.Join(w.jsDir, "gcp-auth.mjs"), aud))
			o.Project = o.ProjectID
			return o, err
		}},
	}
}

// introspection is the peer's RFC 7662 answer with its extension members.
type introspection struct {
	Active   bool   `json:"active"`
	Sub      string `json:"sub"`
	Username string `json:"username"`
	Kind     string `json:"kind"`
	Email    string `json:"email"`
	PodUID   string `json:"pod_uid"`
	Pod      string `json:"pod"`
	Scope    string `json:"scope"`
}

// introspect asks the peer, over its HTTP API, what an access token is.
func (w *gcpWorld) introspect(t *testing.T, token string) introspection {
	t.Helper()
	resp, err := http.PostForm(w.gsts.URL()+"/v1/introspect", url.Values{"token": {token}})
	if err != nil {
		t.Fatalf("introspection: %v", err)
	}
	defer resp.Body.Close()
	var in introspection
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil {
		t.Fatalf("introspection answer: %v", err)
	}
	return in
}

// checkToken checks at the peer that an access token was minted for pod p:
// impersonating email, or as the pod's own federated principal when email
// is "". It returns the record.
func (w *gcpWorld) checkToken(t *testing.T, who string, p *harness.Pod, token, email string) googlests.Issued {
	t.Helper()
	is, ok := w.gsts.Lookup(token)
	if !ok {
		t.Errorf("%s: token (%d bytes) was not issued by the peer", who, len(token))
		return is
	}
	sub := principal(p.Pod.Namespace, p.Pod.Spec.ServiceAccountName)
	wantKind := googlests.Impersonated
	if email == "" {
		wantKind = googlests.Federated
	}
	if is.PodUID != string(p.Pod.UID) || is.Subject != sub || is.Email != email || is.Kind != wantKind {
		t.Errorf("%s: token minted for pod %s/%s (%s), %s, %s %q; want pod %s/%s (%s), %s, %s %q",
			who, is.Namespace, is.PodName, is.PodUID, is.Subject, is.Kind, is.Email,
			p.Pod.Namespace, p.Pod.Name, p.Pod.UID, sub, wantKind, email)
	}
	in := w.introspect(t, token)
	if !in.Active || in.PodUID != string(p.Pod.UID) || in.Sub != sub || in.Email != email || in.Pod != p.Pod.Namespace+"/"+p.Pod.Name {
		t.Errorf("%s: introspection %+v, want the active token of pod %s/%s (%s), %s, email %q", who, in, p.Pod.Namespace, p.Pod.Name, p.Pod.UID, sub, email)
	}
	if email == "" && !strings.HasSuffix(in.Username, "/subject/"+sub) {
		t.Errorf("%s: federated token's principal %q, want …/subject/%s", who, in.Username, sub)
	}
	return is
}

// checkIDToken checks at the peer that an identity token was minted for
// pod p, for email and audience.
func (w *gcpWorld) checkIDToken(t *testing.T, who string, p *harness.Pod, token, email, audience string) {
	t.Helper()
	is, ok := w.gsts.Lookup(token)
	if !ok {
		t.Errorf("%s: identity token (%d bytes) was not issued by the peer", who, len(token))
		return
	}
	if is.Kind != googlests.IDToken || is.PodUID != string(p.Pod.UID) || is.Email != email || is.Audience != audience {
		t.Errorf("%s: identity token minted as %s for pod %s (%s) email %q audience %q; want pod %s email %q audience %q",
			who, is.Kind, is.PodName, is.PodUID, is.Email, is.Audience, p.Pod.UID, email, audience)
	}
}

// snapshot is what the agent and its upstreams have done so far, for one
// pod's figures.
type snapshot struct {
	requests float64 // the agent's credential requests, any status
	trs      int     // TokenRequests bound to the pod
	peer     googlests.Counts
}

func (w *gcpWorld) snap(t *testing.T, p *harness.Pod) snapshot {
	t.Helper()
	m, err := w.agent.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{requests: harness.MetricSum(m, "credbroker_requests_total", nil), trs: w.tokenRequestsFor(t, p.Pod), peer: w.gsts.Counts()}
}

// logDelta logs what one client run cost: the agent's credential requests
// and the upstream calls they caused.
func (w *gcpWorld) logDelta(t *testing.T, who string, a, b snapshot) {
	t.Helper()
	t.Logf("%s: %.0f credential requests to the agent; %d TokenRequests, %d STS exchanges, %d generateAccessToken, %d generateIdToken",
		who, b.requests-a.requests, b.trs-a.trs, b.peer.Token-a.peer.Token,
		b.peer.GenerateAccessToken-a.peer.GenerateAccessToken, b.peer.GenerateIDToken-a.peer.GenerateIDToken)
}

// Each of Google's clients, in a pod whose ServiceAccount names a Google
// service account, gets a token impersonating it that was minted for that
// pod, and an identity token for its audience; in a pod without the
// annotation, its own federated principal's token.
func (w *gcpWorld) testClients(t *testing.T) {
	email := gsaEmail("checkout")
	w.serviceAccount(t, "shop", "checkout", email)
	w.serviceAccount(t, "batch", "nightly", "")
	imp := w.pod(t, "shop", "checkout-7d9f", "checkout")
	fed := w.pod(t, "batch", "nightly-2x4c", "nightly")
	for _, c := range w.clients() {
		t.Run(c.name, func(t *testing.T) {
			t.Run("impersonated", func(t *testing.T) {
				aud := gcpAudience + "/" + c.name
				s0 := w.snap(t, imp)
				out, err := c.run(t, imp, aud)
				if err != nil {
					t.Fatal(err)
				}
				w.logDelta(t, c.name, s0, w.snap(t, imp))
				w.checkToken(t, c.name, imp, out.Token, email)
				if out.Email != "" && out.Email != email || out.Project != "" && out.Project != gcpProject {
					t.Errorf("email %q project %q, want %s %s", out.Email, out.Project, email, gcpProject)
				}
				if aud != "" {
					w.checkIDToken(t, c.name, imp, out.IDToken, email, aud)
				}
			})
			t.Run("federated", func(t *testing.T) {
				s0 := w.snap(t, fed)
				out, err := c.run(t, fed, gcpAudience+"/"+c.name)
				if err != nil {
					t.Fatal(err)
				}
				s1 := w.snap(t, fed)
				w.logDelta(t, c.name, s0, s1)
				w.checkToken(t, c.name, fed, out.Token, "")
				// A federated principal has no identity token; the
				// client says so, and no one asked the peer for one.
				if out.IDToken != "" || reason404(out.IDError) == "" {
					t.Errorf("identity token %d bytes, error %q; want a 404 NoGoogleServiceAccount", len(out.IDToken), out.IDError)
				} else {
					t.Logf("%s: identity token refused: %s", c.name, reason404(out.IDError))
				}
				if n := s1.peer.GenerateIDToken - s0.peer.GenerateIDToken; n != 0 {
					t.Errorf("%d generateIdToken calls for a federated pod", n)
				}
				if out.Email != "" && out.Email != gcpFederatedEmail || out.Project != "" && out.Project != gcpProject {
					t.Errorf("email %q project %q, want %s %s", out.Email, out.Project, gcpFederatedEmail, gcpProject)
				}
			})
		})
	}
	for _, p := range []*harness.Pod{imp, fed} {
		t.Logf("pod %s/%s: %d TokenRequests, %d STS exchanges", p.Pod.Namespace, p.Pod.Name, w.tokenRequestsFor(t, p.Pod), w.gsts.PodCalls(string(p.Pod.UID)))
	}
	c := w.gsts.Counts()
	t.Logf("peer: %d STS calls, %d generateAccessToken, %d generateIdToken", c.Token, c.GenerateAccessToken, c.GenerateIDToken)
}

// A second pod of the same ServiceAccount gets a token of its own, and a
// pod of another ServiceAccount is refused the first one's Google account
// (the peer would not let its principal impersonate it anyway).
func (w *gcpWorld) testSecondPod(t *testing.T) {
	email := gsaEmail("checkout")
	w.serviceAccount(t, "shop", "checkout", email)
	a := w.pod(t, "shop", "checkout-a", "checkout")
	b := w.pod(t, "shop", "checkout-b", "checkout")
	run := func(p *harness.Pod) string {
		out, err := w.clients()[0].run(t, p, "")
		if err != nil {
			t.Fatal(err)
		}
		w.checkToken(t, "go in "+p.Pod.Name, p, out.Token, email)
		return out.Token
	}
	if ta, tb := run(a), run(b); ta == tb {
		t.Errorf("two pods got the same token")
	}
	w.serviceAccount(t, "shop", "intruder", "")
	x := w.pod(t, "shop", "intruder-1", "intruder")
	r := w.get(t, x, "/computeMetadata/v1/instance/service-accounts/"+email+"/token")
	t.Logf("a pod of another ServiceAccount asking for %s: %d %s", email, r.status, strings.TrimSpace(string(r.body)))
	if r.status != http.StatusForbidden && r.status != http.StatusNotFound {
		t.Errorf("another ServiceAccount's pod asking for %s: %d %s, want 403 or 404", email, r.status, r.body)
	}
	if r.status == http.StatusOK {
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.Unmarshal(r.body, &tok)
		is, _ := w.gsts.Lookup(tok.AccessToken)
		t.Errorf("pod of another ServiceAccount served a token minted for %s/%s", is.Namespace, is.PodName)
	}
}

// A ServiceAccount with both an IAM role and a Google service account gets
// each from its own surface on the one listener: AWS credentials from
// /v1/credentials (the STS names the pod's role session), a Google token
// from the metadata paths (the peer names the pod and the account), each
// from a TokenRequest of its own cloud's audience.
func (w *gcpWorld) testBothClouds(t *testing.T) {
	ctx := context.Background()
	email := gsaEmail("hybrid")
	role := "arn:aws:iam::" + oidcsts.DefaultAccountID + ":role/hybrid"
	w.sts.TrustRole(role, principal("multi", "hybrid"))
	w.serviceAccountWith(t, "multi", "hybrid", email, map[string]string{harness.RoleAnnotation: role})
	p := w.pod(t, "multi", "hybrid-1", "hybrid")

	deadline := time.Now().Add(20 * time.Second)
	var r response
	for {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		req := must(newGet(ctx, w.agent.URL))
		resp, err := p.HTTPClient().Do(req)
		if err != nil {
			cancel()
			t.Fatalf("GET %s: %v", w.agent.URL, err)
		}
		r = response{status: resp.StatusCode, header: resp.Header, body: must(readAll(resp.Body))}
		resp.Body.Close()
		cancel()
		if r.status == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.status != http.StatusOK {
		t.Fatalf("AWS credentials: %d %s", r.status, r.body)
	}
	id, ok := w.sts.Lookup(r.creds(t).AccessKeyID)
	if !ok || id.PodUID != string(p.Pod.UID) || id.RoleArn != role {
		t.Errorf("AWS credentials of %+v, want role %s for pod %s", id, role, p.Pod.UID)
	}
	g := w.get(t, p, tokenPath)
	if g.status != http.StatusOK {
		t.Fatalf("Google token: %d %s", g.status, g.body)
	}
	w.checkToken(t, "hybrid", p, tokenOf(t, g), email)

	trs, err := w.cp.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	auds := map[string]int{}
	for _, tr := range trs {
		if tr.BoundUID == string(p.Pod.UID) {
			auds[strings.Join(tr.Audiences, ",")]++
		}
	}
	t.Logf("TokenRequests for the pod by audience: %v", auds)
	if auds["sts.amazonaws.com"] != 1 || auds[googlests.Audience(w.gsts.Provider())] != 1 || len(auds) != 2 {
		t.Errorf("TokenRequests by audience %v, want one for sts.amazonaws.com and one for %s", auds, googlests.Audience(w.gsts.Provider()))
	}
}

// get sends one metadata request from inside p, as the clients do.
func (w *gcpWorld) get(t *testing.T, p *harness.Pod, path string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := must(newGet(ctx, "http://"+w.host+path))
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := p.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, p.Pod.Name, err)
	}
	defer resp.Body.Close()
	return response{status: resp.StatusCode, header: resp.Header, body: must(readAll(resp.Body))}
}

const tokenPath = "/computeMetadata/v1/instance/service-accounts/default/token"

// tokenOf decodes a token answer.
func tokenOf(t *testing.T, r response) string {
	t.Helper()
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal(r.body, &tok); err != nil || tok.AccessToken == "" || tok.ExpiresIn <= 0 || tok.TokenType != "Bearer" {
		t.Fatalf("token answer %d (%d bytes) is not {access_token, expires_in > 0, token_type Bearer}: %v", r.status, len(r.body), err)
	}
	return tok.AccessToken
}

// The default ServiceAccount gets 403, from every client and even when
// annotated, and the peer never hears of it.
func (w *gcpWorld) testDefaultSA(t *testing.T) {
	w.serviceAccount(t, "lazy", "default", gsaEmail("lazy"))
	p := w.pod(t, "lazy", "app-1", "default")
	before := w.gsts.Counts().Token
	r := w.get(t, p, tokenPath)
	if r.status != http.StatusForbidden {
		t.Fatalf("default ServiceAccount: %d %s, want 403", r.status, r.body)
	}
	if !strings.Contains(strings.ToLower(string(r.body)), "default") {
		t.Errorf("403 body %q does not mention the default ServiceAccount", r.body)
	}
	for _, c := range w.clients() {
		out, err := c.run(t, p, "")
		if err == nil {
			t.Errorf("%s in a pod of the default ServiceAccount got a token (%d bytes)", c.name, len(out.Token))
			continue
		}
		if why := reason(err.Error()); why == "" {
			t.Errorf("%s failed without saying 403 or naming the default ServiceAccount:\n%v", c.name, err)
		} else {
			t.Logf("%s refused: %s", c.name, why)
		}
	}
	if got := w.gsts.PodCalls(string(p.Pod.UID)); got != 0 || w.gsts.Counts().Token != before {
		t.Errorf("the peer saw %d exchanges for the default ServiceAccount's pod", got)
	}
	if got := w.tokenRequestsFor(t, p.Pod); got != 0 {
		t.Errorf("%d TokenRequests for the default ServiceAccount's pod", got)
	}
}

// reason404 returns the first line of an identity-token failure that names
// the agent's answer, a 404 NoGoogleServiceAccount. Python and Node show
// the agent's text; Go's compute/metadata turns any 404 into its
// NotDefinedError ("… not defined") and drops the body; gcloud says "No
// identity token can be obtained from the current credentials."
func reason404(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "NoGoogleServiceAccount") || strings.Contains(l, "404") ||
			strings.Contains(l, "not defined") || strings.Contains(l, "No identity token can be obtained") {
			l = strings.TrimSpace(l)
			if len(l) > 300 {
				l = l[:300] + "…"
			}
			return l
		}
	}
	return ""
}

// reason returns the first line of a client's failure that carries the
// agent's refusal: the status 403 or the default ServiceAccount named.
// gcloud says neither: it turns any 403 from the metadata server into
// "The request is rejected. Please check if the metadata server is
// concealed." (googlecloudsdk/core/credentials/gce.py).
func reason(s string) string {
	return firstLine(s, "403", "DefaultServiceAccount", "default ServiceAccount", "metadata server is concealed")
}

// 30 concurrent first requests from one pod share one TokenRequest and one
// STS exchange, and all get the same token.
func (w *gcpWorld) testConcurrentFirst(t *testing.T) {
	w.serviceAccount(t, "burst", "api", "")
	// A slow STS keeps the first exchange in flight while all 30 arrive.
	if err := w.gsts.SetFault(googlests.Fault{Endpoints: []googlests.Endpoint{googlests.EndpointToken}, Latency: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	defer w.gsts.SetFault(googlests.Fault{})
	before := w.gsts.Counts().Token
	p := w.pod(t, "burst", "api-1", "api")

	const n = 30
	results := concurrently(n, func() response { return w.get(t, p, tokenPath) })
	tokens := map[string]int{}
	for _, r := range results {
		if r.status != http.StatusOK {
			t.Errorf("status %d %s", r.status, r.body)
			continue
		}
		tokens[tokenOf(t, r)]++
	}
	if len(tokens) != 1 {
		t.Errorf("%d different tokens served, want 1", len(tokens))
	}
	for tok := range tokens {
		w.checkToken(t, "burst", p, tok, "")
	}
	sts := w.gsts.Counts().Token - before
	trs := w.tokenRequestsFor(t, p.Pod)
	t.Logf("%d requests: %d tokens, %d TokenRequests, %d STS calls (%d for the pod)", n, len(tokens), trs, sts, w.gsts.PodCalls(string(p.Pod.UID)))
	if sts != 1 || w.gsts.PodCalls(string(p.Pod.UID)) != 1 {
		t.Errorf("STS calls = %d (for the pod %d), want 1", sts, w.gsts.PodCalls(string(p.Pod.UID)))
	}
	if trs != 1 {
		t.Errorf("TokenRequests bound to the pod = %d, want 1", trs)
	}
}

// The peer down: a pod with a cached token keeps it, a new pod gets a
// retryable 503 with Retry-After, and once the peer is back the new pod is
// served its own token.
func (w *gcpWorld) testPeerDown(t *testing.T) {
	w.serviceAccount(t, "outage", "svc", "")
	cached := w.pod(t, "outage", "cached-1", "svc")
	r := w.get(t, cached, tokenPath)
	if r.status != http.StatusOK {
		t.Fatalf("before the outage: %d %s", r.status, r.body)
	}
	first := tokenOf(t, r)
	w.checkToken(t, "cached", cached, first, "")

	for _, f := range []struct {
		name  string
		fault googlests.Fault
	}{
		{"Refused", googlests.Fault{Refuse: true}},
		{"503", googlests.Fault{Status: http.StatusServiceUnavailable}},
	} {
		t.Run(f.name, func(t *testing.T) {
			if err := w.gsts.SetFault(f.fault); err != nil {
				t.Fatal(err)
			}
			restored := false
			defer func() {
				if !restored {
					w.gsts.SetFault(googlests.Fault{})
				}
			}()
			for range 3 {
				r := w.get(t, cached, tokenPath)
				if r.status != http.StatusOK {
					t.Fatalf("cached pod during the outage: %d %s", r.status, r.body)
				}
				if tokenOf(t, r) != first {
					t.Errorf("cached pod got another token during the outage")
				}
			}
			fresh := w.pod(t, "outage", "fresh-"+strings.ToLower(f.name), "svc")
			r := w.get(t, fresh, tokenPath)
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("new pod during the outage: %d %s, want 503", r.status, r.body)
			}
			if ra := r.header["Retry-After"]; len(ra) == 0 {
				t.Errorf("503 without Retry-After")
			} else {
				t.Logf("new pod: 503, Retry-After %s, %s", ra[0], r.body)
			}
			if got := r.header["Metadata-Flavor"]; len(got) == 0 || got[0] != "Google" {
				t.Errorf("503 without Metadata-Flavor: Google")
			}

			if err := w.gsts.SetFault(googlests.Fault{}); err != nil {
				t.Fatal(err)
			}
			restored = true
			t0 := time.Now()
			deadline := t0.Add(60 * time.Second)
			for {
				r = w.get(t, fresh, tokenPath)
				if r.status == http.StatusOK {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("new pod not served within 60s of the peer's recovery: %d %s", r.status, r.body)
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("new pod served %v after the peer recovered", time.Since(t0).Round(time.Millisecond))
			w.checkToken(t, "after recovery", fresh, tokenOf(t, r), "")
		})
	}
}

// After everything above, the agent's debug log and its metrics hold none
// of the tokens: ServiceAccount tokens the peer received, federated,
// impersonated and identity tokens it issued.
func (w *gcpWorld) testNoTokenLeaked(t *testing.T) {
	secrets := w.gsts.Secrets()
	if len(secrets) < 10 {
		t.Fatalf("only %d tokens recorded by the peer; the suite did not exercise the agent", len(secrets))
	}
	checkNoSecret(t, w.agent, append(secrets, w.sts.Secrets()...))
}

// checkNoSecret fails t if any secret appears in a's whole log or its
// metrics. A JWT's header is the same for many tokens; for JWTs it looks for
// the signature part, for every other secret the whole of it.
func checkNoSecret(t *testing.T, a *harness.Agent, secrets []string) {
	t.Helper()
	logs, err := os.ReadFile(a.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) == 0 {
		t.Fatal("the agent wrote no log at all")
	}
	metrics, err := a.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range secrets {
		needle := s
		if parts := strings.Split(s, "."); len(parts) == 3 && strings.HasPrefix(s, "eyJ") {
			needle = parts[2]
		}
		if strings.Contains(string(logs), needle) || strings.Contains(metrics, needle) {
			t.Errorf("secret #%d (of %d) appears in the agent's log or metrics", i, len(secrets))
		}
	}
	t.Logf("%d secrets, none in %d bytes of log and %d bytes of metrics", len(secrets), len(logs), len(metrics))
}
