//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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

	"github.com/credbroker/agent/integration/entra"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/exchange/azure"
)

const (
	azNode     = "node-azure"
	azNSPrefix = "cbaz"
	azSubnet   = "10.244.4.%d" // TestAzure's /24 (integration/README.md)
	// azTenant is the agent's --azure-tenant-id; azTenant2 is another
	// tenant, named by a ServiceAccount's tenant annotation (as a domain).
	azTenant  = "3f2b8c1e-6d4a-4e9b-9a7c-1d2e3f4a5b6c"
	azTenant2 = "fabrikam.onmicrosoft.com"
	// azHeader is the agent's --azure-identity-header, what pods put in
	// IDENTITY_HEADER.
	azHeader        = "cb-e2e-identity-7Qx2"
	azTokenPath     = "/metadata/identity/oauth2/token"
	azClientAnnot   = "azure.workload.identity/client-id"
	azTenantAnnot   = "azure.workload.identity/tenant-id"
	azDebianPython  = "/usr/bin/python3" // python3-azure's interpreter
	azClientShop    = "6a1f0c2d-3b4e-4f5a-8b6c-7d8e9f0a1b2c"
	azClientBilling = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"
	azClientBurst   = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
	azClientOutage  = "c0ffee00-1234-4abc-9def-0123456789ab"
	azClientWarm    = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a"
	// azResource is what the refusal and raw checks ask for.
	azResource = "https://vault.azure.net"
)

// azWorld is what TestAzure's scenarios share: a control plane, our AWS
// STS (the harness's agent always has AWS flags), the Entra ID token
// endpoint peer and one agent with Azure on.
type azWorld struct {
	*suite
	jsDir  string // integration/sdk/js-azure
	azauth string // the Go client program
	entra  *entra.Server
	// endpoint is what pods put in IDENTITY_ENDPOINT.
	endpoint string

	// rogue is the pod whose ServiceAccount no federated credential
	// admits, and deniedAt when the agent first answered it.
	rogue    *harness.Pod
	deniedAt time.Time
}

// TestAzure runs Azure's own clients (azidentity, Python azure-identity,
// JS @azure/identity) inside pods against the agent's managed-identity
// surface, backed by the Entra peer, and checks at the peer that every
// token a client got was minted for its own pod, client ID and tenant.
func TestAzure(t *testing.T) {
	w := setupAzure(t)
	// First, so that its denial window (azure.DeniedRetryWindow) runs out
	// during the rest.
	t.Run("NotAdmitted", w.testNotAdmitted)
	t.Run("Clients", w.testClients)
	t.Run("SecondPodOwnToken", w.testSecondPod)
	t.Run("Refusals", w.testRefusals)
	t.Run("ConcurrentFirstRequests", w.testConcurrentFirst)
	t.Run("EntraDown", w.testEntraDown)
	t.Run("Prefetch", w.testPrefetch)
	t.Run("NotAdmittedBecomesFinal", w.testDenialFinal)
	t.Run("NoTokenInLogsOrMetrics", w.testNoTokenLeaked)
}

func setupAzure(t *testing.T) *azWorld {
	t.Helper()
	w := &azWorld{suite: newSuite(t, azSubnet, "ip", "kubectl", "node")}
	w.jsDir = filepath.Join(w.root, "integration/sdk/js-azure")
	if _, err := os.Stat(filepath.Join(w.jsDir, "node_modules/@azure/identity")); err != nil {
		testenv.Unavailable(t, "@azure/identity not installed in integration/sdk/js-azure; run `make sdk-deps`")
	}
	if err := exec.Command(azDebianPython, "-c", "import azure.identity").Run(); err != nil {
		testenv.Unavailable(t, "%s cannot import azure.identity (apt-get install python3-azure): %v", azDebianPython, err)
	}
	w.azauth = w.build(t, "azauth")

	w.start(t, azNode, azNSPrefix)
	// The applications exist from the start, with no federated
	// credentials; serviceAccount adds them.
	var err error
	w.entra, err = w.cp.StartEntra(context.Background(), harness.EntraConfig{Credentials: map[entra.App][]string{
		{Tenant: azTenant, ClientID: azClientShop}:     nil,
		{Tenant: azTenant2, ClientID: azClientBilling}: nil,
		{Tenant: azTenant, ClientID: azClientBurst}:    nil,
		{Tenant: azTenant, ClientID: azClientOutage}:   nil,
	}})
	if err != nil {
		t.Fatalf("StartEntra: %v", err)
	}
	t.Cleanup(func() { w.entra.Close() })
	w.startAgent(t, harness.AgentConfig{
		Name:     "agent-azure",
		NodeName: azNode,
		ExtraArgs: []string{
			"--azure-tenant-id=" + azTenant,
			"--azure-identity-header=" + azHeader,
			"--azure-authority-host=" + w.entra.URL(),
		},
	})
	w.endpoint = "http://" + w.agent.Listen + azTokenPath
	return w
}

// azSA is a ServiceAccount of the test and what the peer knows of it.
type azSA struct {
	ns, name string
	clientID string // the client-id annotation; none when ""
	tenant   string // the tenant-id annotation; none when ""
	// admit adds a federated credential for the ServiceAccount to its
	// application at the peer.
	admit bool
}

// tenantOr is the tenant the agent uses for the ServiceAccount.
func (s azSA) tenantOr() string {
	if s.tenant != "" {
		return s.tenant
	}
	return azTenant
}

func (w *azWorld) serviceAccount(t *testing.T, s azSA) {
	t.Helper()
	ctx := context.Background()
	if err := w.cp.EnsureNamespace(ctx, s.ns); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: s.name, Annotations: map[string]string{}}}
	if s.clientID != "" {
		sa.Annotations[azClientAnnot] = s.clientID
	}
	if s.tenant != "" {
		sa.Annotations[azTenantAnnot] = s.tenant
	}
	if s.admit {
		w.entra.Allow(entra.App{Tenant: s.tenantOr(), ClientID: s.clientID},
			entra.FederatedCredential{Issuer: w.cp.Issuer, Subject: principal(s.ns, s.name)})
	}
	_, err := w.cp.Client.CoreV1().ServiceAccounts(s.ns).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func (w *azWorld) pod(t *testing.T, ns, name, sa string) *harness.Pod {
	t.Helper()
	p := w.suite.pod(t, ns, name, sa)
	w.waitSeen(t, p)
	return p
}

// azNobody is a client ID no ServiceAccount names.
const azNobody = "00000000-0000-4000-8000-000000000000"

// waitSeen waits until the agent knows p and its ServiceAccount, with a
// request that the broker refuses before any fetch (a client ID the pod
// may not use), so that it costs no TokenRequest and no Entra call.
func (w *azWorld) waitSeen(t *testing.T, p *harness.Pod) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := w.get(t, p, azResource, azNobody, azHeader)
		code, _ := r.errorCode(t)
		if r.status != http.StatusServiceUnavailable {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not known to the agent within 30s: %d %s", p.Pod.Name, r.status, code)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// env is an Azure client's whole environment inside a pod: the agent's
// managed-identity endpoint and header, an empty HOME, nothing else Azure.
func (w *azWorld) env() []string { return w.envAt(w.endpoint) }

// envAt is env with another agent's endpoint.
func (w *azWorld) envAt(endpoint string) []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + w.home,
		"LANG=C.UTF-8",
		"IDENTITY_ENDPOINT=" + endpoint,
		"IDENTITY_HEADER=" + azHeader,
	}
}

// azStep is one credential's outcome as a client program prints it.
type azStep struct {
	Token string `json:"token"`
	Error string `json:"error"`
}

// azOut is a client program's report: mi (ManagedIdentityCredential),
// mi_client (with the pod's own client ID), dac (DefaultAzureCredential),
// other (with a client ID the pod may not use). Each asks for its own
// resource: R, R2, R3, R4.
type azOut struct {
	MI       azStep `json:"mi"`
	MIClient azStep `json:"mi_client"`
	DAC      azStep `json:"dac"`
	Other    azStep `json:"other"`
	// Versions, as the programs report them.
	Version  string `json:"version"`
	Identity string `json:"identity"`
	MSALNode string `json:"msalNode"`
}

// steps lists the steps that get a token with the resource each asks for.
func (o azOut) steps(resource string) []struct {
	name, resource string
	step           azStep
} {
	return []struct {
		name, resource string
		step           azStep
	}{
		{"ManagedIdentityCredential", resource, o.MI},
		{"ManagedIdentityCredential(client ID)", resource + "2", o.MIClient},
		{"DefaultAzureCredential", resource + "3", o.DAC},
	}
}

// Python: what pkg/api/azureidentity's pyclient test runs, as an
// application does. argv: resource, own client ID, other client ID.
const azPyScript = `
import json, sys
import azure.identity
from azure.identity import ManagedIdentityCredential, DefaultAzureCredential
res, own, other = sys.argv[1], sys.argv[2], sys.argv[3]
out = {"version": azure.identity.__version__}
def get(name, cred, scope):
    try:
        t = cred.get_token(scope)
        out[name] = {"token": t.token}
    except Exception as e:
        out[name] = {"error": "%s: %s" % (type(e).__name__, e)}
get("mi", ManagedIdentityCredential(), res + "/.default")
get("mi_client", ManagedIdentityCredential(client_id=own), res + "2/.default")
get("dac", DefaultAzureCredential(exclude_shared_token_cache_credential=True), res + "3/.default")
get("other", ManagedIdentityCredential(client_id=other), res + "4/.default")
print(json.dumps(out))
`

// azClient is one real Azure client.
type azClient struct {
	name string
	run  func(t *testing.T, p *harness.Pod, resource, own, other string) (azOut, error)
}

func (w *azWorld) clients() []azClient {
	return []azClient{
		{"go-azidentity", func(t *testing.T, p *harness.Pod, res, own, other string) (azOut, error) {
			return w.runClient(t, p, "", w.azauth, res, own, other)
		}},
		{"python-azure-identity", func(t *testing.T, p *harness.Pod, res, own, other string) (azOut, error) {
			return w.runClient(t, p, "", azDebianPython, "-c", azPyScript, res, own, other)
		}},
		{"node-azure-identity", func(t *testing.T, p *harness.Pod, res, own, other string) (azOut, error) {
			return w.runClient(t, p, w.jsDir, "node", filepath.Join(w.jsDir, "azure-identity.mjs"), res, own, other)
		}},
	}
}

// runClient runs a client program inside p and decodes its report.
func (w *azWorld) runClient(t *testing.T, p *harness.Pod, dir string, args ...string) (azOut, error) {
	t.Helper()
	b, err := runInPod(p, 120*time.Second, dir, w.env(), args...)
	var o azOut
	if err != nil {
		return o, err
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return o, fmt.Errorf("%s printed %q: %w", filepath.Base(args[0]), b, err)
	}
	return o, nil
}

// checkToken checks at the peer that token was minted for pod p, whose
// ServiceAccount is s, for resource.
func (w *azWorld) checkToken(t *testing.T, who string, p *harness.Pod, s azSA, token, resource string) entra.Issued {
	t.Helper()
	is, ok := w.entra.Lookup(token)
	if !ok {
		t.Errorf("%s: token (%d bytes) was not issued by the peer", who, len(token))
		return is
	}
	sub := principal(p.Pod.Namespace, p.Pod.Spec.ServiceAccountName)
	if is.PodUID != string(p.Pod.UID) || is.PodName != p.Pod.Name || is.Namespace != p.Pod.Namespace || is.Subject != sub ||
		!strings.EqualFold(is.ClientID, s.clientID) || !strings.EqualFold(is.Tenant, s.tenantOr()) || is.Resource != resource ||
		is.Issuer != w.cp.Issuer {
		t.Errorf("%s: token minted for pod %s/%s (%s), %s, client %s in tenant %s, resource %q, issuer %s; want pod %s/%s (%s), %s, client %s in tenant %s, resource %q, issuer %s",
			who, is.Namespace, is.PodName, is.PodUID, is.Subject, is.ClientID, is.Tenant, is.Resource, is.Issuer,
			p.Pod.Namespace, p.Pod.Name, p.Pod.UID, sub, s.clientID, s.tenantOr(), resource, w.cp.Issuer)
	}
	return is
}

// azSnapshot is what the agent and its upstreams have done so far, for one
// pod's figures.
type azSnapshot struct {
	requests float64 // the agent's requests, any status
	trs      int     // TokenRequests bound to the pod
	issued   int64   // tokens the peer issued for the pod
	peer     entra.Counts
}

func (w *azWorld) snap(t *testing.T, p *harness.Pod) azSnapshot {
	t.Helper()
	m, err := w.agent.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return azSnapshot{requests: harness.MetricSum(m, "credbroker_requests_total", nil), trs: w.tokenRequestsFor(t, p.Pod),
		issued: w.entra.PodCalls(string(p.Pod.UID)), peer: w.entra.Counts()}
}

// logDelta logs what one client run cost.
func (w *azWorld) logDelta(t *testing.T, who string, a, b azSnapshot) {
	t.Helper()
	t.Logf("%s: %.0f requests to the agent; %d TokenRequests, %d Entra token calls (%d tokens issued for the pod, %d refused)",
		who, b.requests-a.requests, b.trs-a.trs, b.peer.Token-a.peer.Token, b.issued-a.issued,
		(b.peer.NoMatch+b.peer.InvalidToken+b.peer.BadRequest)-(a.peer.NoMatch+a.peer.InvalidToken+a.peer.BadRequest))
}

// refusedWith checks that a client's step was refused with code: the
// error must carry the agent's code (every client shows the body; only
// azidentity also prints the status, "RESPONSE 403"). It returns the line
// that carries the code, or "" after reporting.
func refusedWith(t *testing.T, who string, st azStep, code string) string {
	t.Helper()
	if st.Token != "" {
		t.Errorf("%s got a token (%d bytes), want a refusal %s", who, len(st.Token), code)
		return ""
	}
	why := firstLine(st.Error, code)
	if why == "" {
		t.Errorf("%s failed without naming %s:\n%s", who, code, st.Error)
		return ""
	}
	if strings.HasPrefix(who, "go-azidentity") && !strings.Contains(st.Error, "RESPONSE 403") {
		t.Errorf("%s: azidentity does not report a 403:\n%s", who, st.Error)
	}
	return why
}

// chainAfter says whether a DefaultAzureCredential error shows the chain
// stopping at the managed identity's refusal (which carries code) or going
// on to developer credentials.
func chainAfter(s, code string) string {
	i := strings.Index(s, code)
	if i < 0 {
		return "no refusal in the error"
	}
	var next []string
	for _, name := range []string{"Visual Studio Code", "Azure CLI", "AzureCliCredential", "PowerShell", "Azure Developer CLI", "AzureDeveloperCLICredential"} {
		if strings.Contains(s[i:], name) {
			next = append(next, name)
		}
	}
	if len(next) == 0 {
		return "stopped at ManagedIdentityCredential"
	}
	return "went on to " + strings.Join(next, ", ")
}

// firstLine returns the first line of a client's error that carries want
// (a status or a code), shortened; "" when no line does.
func firstLine(s string, want ...string) string {
	for _, l := range strings.Split(s, "\n") {
		for _, w := range want {
			if strings.Contains(l, w) {
				l = strings.TrimSpace(l)
				if len(l) > 300 {
					l = l[:300] + "…"
				}
				return l
			}
		}
	}
	return ""
}

// Each of Azure's clients, in a pod whose ServiceAccount names a client ID
// (the agent's tenant), and in a pod whose ServiceAccount names another
// client ID in another tenant, gets tokens minted for that pod, client ID
// and tenant, through ManagedIdentityCredential with and without the
// client ID and DefaultAzureCredential, and is refused (403
// IdentityNotAllowed) the other pod's client ID.
func (w *azWorld) testClients(t *testing.T) {
	shop := azSA{ns: "shop", name: "checkout", clientID: azClientShop}
	billing := azSA{ns: "billing", name: "invoicer", clientID: azClientBilling, tenant: azTenant2, admit: true}
	w.serviceAccount(t, shop) // admitted by NotAdmitted
	w.serviceAccount(t, billing)
	pods := []struct {
		sa    azSA
		p     *harness.Pod
		other string
	}{
		{shop, w.pod(t, "shop", "checkout-7d9f", "checkout"), azClientBilling},
		{billing, w.pod(t, "billing", "invoicer-5c2b", "invoicer"), azClientShop},
	}
	for _, c := range w.clients() {
		t.Run(c.name, func(t *testing.T) {
			for _, pp := range pods {
				t.Run(pp.sa.ns, func(t *testing.T) {
					res := "https://" + c.name + ".vault.example"
					s0 := w.snap(t, pp.p)
					out, err := c.run(t, pp.p, res, pp.sa.clientID, pp.other)
					if err != nil {
						t.Fatal(err)
					}
					s1 := w.snap(t, pp.p)
					w.logDelta(t, c.name+" in "+pp.p.Pod.Name, s0, s1)
					if v := out.Version + out.Identity; v != "" {
						t.Logf("%s %s%s", c.name, v, map[bool]string{true: " (msal-node " + out.MSALNode + ")"}[out.MSALNode != ""])
					}
					for _, st := range out.steps(res) {
						if st.step.Error != "" || st.step.Token == "" {
							t.Errorf("%s: no token: %s", st.name, st.step.Error)
							continue
						}
						is := w.checkToken(t, c.name+" "+st.name, pp.p, pp.sa, st.step.Token, st.resource)
						t.Logf("%s: token minted for %s/%s (%s), %s, client %s, tenant %s, resource %s",
							st.name, is.Namespace, is.PodName, is.PodUID, is.Subject, is.ClientID, is.Tenant, is.Resource)
					}
					if why := refusedWith(t, c.name+" with another client ID", out.Other, "IdentityNotAllowed"); why != "" {
						t.Logf("another client ID refused: %s", why)
					}
					if n := s1.issued - s0.issued; n != 3 {
						t.Errorf("the peer issued %d tokens for the pod, want 3 (one per resource)", n)
					}
				})
			}
		})
	}
	for _, pp := range pods {
		auds := w.tokenRequestsByAudience(t, pp.p.Pod)
		t.Logf("pod %s/%s: TokenRequests by audience %v, %d tokens issued by the peer", pp.p.Pod.Namespace, pp.p.Pod.Name,
			auds, w.entra.PodCalls(string(pp.p.Pod.UID)))
		if auds[entra.TokenAudience] == 0 || len(auds) != 1 {
			t.Errorf("pod %s: TokenRequests by audience %v, want only %s", pp.p.Pod.Name, auds, entra.TokenAudience)
		}
	}
	c := w.entra.Counts()
	t.Logf("peer: %d token calls, %d issued, %d no match, %d invalid assertions, %d bad requests", c.Token, c.Issued, c.NoMatch, c.InvalidToken, c.BadRequest)
}

// A second pod of the same ServiceAccount gets tokens of its own for the
// same resources (the agent's cache is per pod).
func (w *azWorld) testSecondPod(t *testing.T) {
	shop := azSA{ns: "shop", name: "checkout", clientID: azClientShop}
	w.serviceAccount(t, shop) // exists and is admitted already
	a := w.pod(t, "shop", "checkout-a", "checkout")
	b := w.pod(t, "shop", "checkout-b", "checkout")
	res := "https://second.vault.example"
	run := func(p *harness.Pod) string {
		s0 := w.snap(t, p)
		out, err := w.clients()[0].run(t, p, res, shop.clientID, azClientBilling)
		if err != nil {
			t.Fatal(err)
		}
		w.logDelta(t, "go-azidentity in "+p.Pod.Name, s0, w.snap(t, p))
		if out.MI.Token == "" {
			t.Fatalf("no token in %s: %s", p.Pod.Name, out.MI.Error)
		}
		is := w.checkToken(t, "go in "+p.Pod.Name, p, shop, out.MI.Token, res)
		t.Logf("pod %s: token minted for %s (%s)", p.Pod.Name, is.PodName, is.PodUID)
		return out.MI.Token
	}
	if ta, tb := run(a), run(b); ta == tb {
		t.Errorf("two pods got the same token")
	}
}

// azResponse is one answer of the agent's managed-identity surface.
type azResponse struct {
	status int
	header http.Header
	body   []byte
}

// azToken is the App Service form's answer.
type azToken struct {
	AccessToken string `json:"access_token"`
	ExpiresOn   string `json:"expires_on"`
	Resource    string `json:"resource"`
	TokenType   string `json:"token_type"`
	ClientID    string `json:"client_id"`
}

func (r azResponse) token(t *testing.T) azToken {
	t.Helper()
	var tok azToken
	if err := json.Unmarshal(r.body, &tok); err != nil || r.status != http.StatusOK || tok.AccessToken == "" || tok.ExpiresOn == "" || tok.TokenType != "Bearer" {
		t.Fatalf("token answer %d (%d bytes) is not {access_token, expires_on, token_type Bearer}: %v", r.status, len(r.body), err)
	}
	return tok
}

// errorCode decodes an error answer {"error","error_description"}.
func (r azResponse) errorCode(t *testing.T) (code, description string) {
	t.Helper()
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
		t.Fatalf("status %d with a body that is not {error, error_description}: %q", r.status, r.body)
	}
	return e.Error, e.Description
}

// get asks the agent for a token from inside p, App Service style, as the
// clients do; header is the X-IDENTITY-HEADER sent.
func (w *azWorld) get(t *testing.T, p *harness.Pod, resource, clientID, header string) azResponse {
	t.Helper()
	return w.getAt(t, w.endpoint, p, resource, clientID, header)
}

// getAt is get from another agent's endpoint.
func (w *azWorld) getAt(t *testing.T, endpoint string, p *harness.Pod, resource, clientID, header string) azResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	q := url.Values{"api-version": {"2019-08-01"}, "resource": {resource}}
	if clientID != "" {
		q.Set("client_id", clientID)
	}
	req := must(newGet(ctx, endpoint+"?"+q.Encode()))
	req.Header.Set("X-IDENTITY-HEADER", header)
	resp, err := p.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", azTokenPath, p.Pod.Name, err)
	}
	defer resp.Body.Close()
	return azResponse{status: resp.StatusCode, header: resp.Header, body: must(readAll(resp.Body))}
}

// The unannotated ServiceAccount (403 NoRoleAnnotation) and the default
// ServiceAccount (403 DefaultServiceAccount, though annotated) are refused
// by every client, and neither the API server nor the peer hears of them;
// a wrong identity header is a 401.
func (w *azWorld) testRefusals(t *testing.T) {
	w.serviceAccount(t, azSA{ns: "batch", name: "nightly"})
	w.serviceAccount(t, azSA{ns: "lazy", name: "default", clientID: azClientShop})
	cases := []struct {
		name string
		p    *harness.Pod
		code string
	}{
		{"Unannotated", w.pod(t, "batch", "nightly-2x4c", "nightly"), "NoRoleAnnotation"},
		{"DefaultServiceAccount", w.pod(t, "lazy", "app-1", "default"), "DefaultServiceAccount"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := w.entra.Counts().Token
			r := w.get(t, tc.p, azResource, "", azHeader)
			code, desc := r.errorCode(t)
			t.Logf("raw: %d %s: %s", r.status, code, desc)
			if r.status != http.StatusForbidden || code != tc.code {
				t.Errorf("raw request: %d %s, want 403 %s", r.status, code, tc.code)
			}
			for _, c := range w.clients() {
				out, err := c.run(t, tc.p, azResource, azClientShop, azClientBilling)
				if err != nil {
					t.Errorf("%s: %v", c.name, err)
					continue
				}
				for _, st := range append(out.steps(azResource), struct {
					name, resource string
					step           azStep
				}{"ManagedIdentityCredential(another client ID)", azResource + "4", out.Other}) {
					if why := refusedWith(t, c.name+" "+st.name, st.step, tc.code); why != "" {
						t.Logf("%s %s refused: %s", c.name, st.name, why)
					}
					if st.name == "DefaultAzureCredential" {
						t.Logf("%s DefaultAzureCredential after the refusal: %s", c.name, chainAfter(st.step.Error, tc.code))
					}
				}
			}
			if n := w.entra.Counts().Token - before; n != 0 {
				t.Errorf("%d Entra calls for a refused pod", n)
			}
			if got := w.tokenRequestsByAudience(t, tc.p.Pod); len(got) != 0 {
				t.Errorf("TokenRequests for a refused pod: %v", got)
			}
		})
	}
	t.Run("WrongIdentityHeader", func(t *testing.T) {
		p := w.pod(t, "shop", "checkout-hdr", "checkout")
		r := w.get(t, p, azResource, "", "not-"+azHeader)
		code, desc := r.errorCode(t)
		t.Logf("wrong X-IDENTITY-HEADER: %d %s: %s", r.status, code, desc)
		if r.status != http.StatusUnauthorized {
			t.Errorf("wrong X-IDENTITY-HEADER: %d %s, want 401", r.status, code)
		}
	})
}

// A ServiceAccount naming an application none of whose federated
// credentials has its subject: Entra answers AADSTS70021, which the agent
// treats as possibly eventual consistency for azure.DeniedRetryWindow (503
// AccessDenied, Retry-After) before it becomes final
// (NotAdmittedBecomesFinal).
func (w *azWorld) testNotAdmitted(t *testing.T) {
	// The application has a federated credential, for shop/checkout only:
	// Entra's answer is then 70021 (without any, it is 70025).
	w.serviceAccount(t, azSA{ns: "shop", name: "checkout", clientID: azClientShop, admit: true})
	w.serviceAccount(t, azSA{ns: "shop", name: "rogue", clientID: azClientShop})
	w.rogue = w.pod(t, "shop", "rogue-1", "rogue")
	before := w.entra.Counts()
	r := w.get(t, w.rogue, azResource, "", azHeader)
	w.deniedAt = time.Now()
	code, desc := r.errorCode(t)
	t.Logf("not admitted, within the window: %d %s (Retry-After %q): %s", r.status, code, r.header.Get("Retry-After"), desc)
	if r.status != http.StatusServiceUnavailable || code != "AccessDenied" || r.header.Get("Retry-After") == "" {
		t.Errorf("not admitted, within the window: %d %s Retry-After %q, want 503 AccessDenied with Retry-After", r.status, code, r.header.Get("Retry-After"))
	}
	if !strings.Contains(desc, "AADSTS70021") {
		t.Errorf("description %q does not name AADSTS70021", desc)
	}
	after := w.entra.Counts()
	if after.NoMatch-before.NoMatch < 1 || after.Issued != before.Issued {
		t.Errorf("peer: %d no-match refusals, %d tokens issued; want at least 1 and 0", after.NoMatch-before.NoMatch, after.Issued-before.Issued)
	}
}

// After Azure's denial window the same pod's denial is final: 403
// AccessDenied, as the raw surface and a real client (azidentity, which
// does not retry a 403) report it.
func (w *azWorld) testDenialFinal(t *testing.T) {
	if w.rogue == nil {
		t.Skip("NotAdmitted did not run")
	}
	deadline := w.deniedAt.Add(azure.DeniedRetryWindow + 90*time.Second)
	var r azResponse
	for {
		r = w.get(t, w.rogue, azResource, "", azHeader)
		if r.status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
	}
	code, desc := r.errorCode(t)
	t.Logf("not admitted, %v after the first denial: %d %s: %s", time.Since(w.deniedAt).Round(time.Second), r.status, code, desc)
	if r.status != http.StatusForbidden || code != "AccessDenied" {
		t.Fatalf("not admitted, after the window: %d %s, want 403 AccessDenied", r.status, code)
	}
	for _, c := range w.clients() {
		out, err := c.run(t, w.rogue, azResource, azClientShop, azClientBilling)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if why := refusedWith(t, c.name, out.MI, "AccessDenied"); why != "" {
			t.Logf("%s refused: %s", c.name, why)
		}
	}
	if n := w.entra.PodCalls(string(w.rogue.Pod.UID)); n != 0 {
		t.Errorf("the peer issued %d tokens for the pod it does not admit", n)
	}
}

// 20 concurrent first requests from one pod share one TokenRequest and one
// Entra call, and all get the same token.
func (w *azWorld) testConcurrentFirst(t *testing.T) {
	sa := azSA{ns: "burst", name: "api", clientID: azClientBurst, admit: true}
	w.serviceAccount(t, sa)
	p := w.pod(t, "burst", "api-1", "api")
	// A slow Entra keeps the first exchange in flight while all 20 arrive.
	if err := w.entra.SetFault(entra.Fault{Latency: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	defer w.entra.SetFault(entra.Fault{})
	s0 := w.snap(t, p)
	const n = 20
	results := concurrently(n, func() azResponse { return w.get(t, p, azResource, "", azHeader) })
	s1 := w.snap(t, p)
	tokens := map[string]int{}
	for _, r := range results {
		if r.status != http.StatusOK {
			t.Errorf("status %d %s", r.status, r.body)
			continue
		}
		tokens[r.token(t).AccessToken]++
	}
	if len(tokens) != 1 {
		t.Errorf("%d different tokens served, want 1", len(tokens))
	}
	for tok := range tokens {
		w.checkToken(t, "burst", p, sa, tok, azResource)
	}
	w.logDelta(t, fmt.Sprintf("%d concurrent requests", n), s0, s1)
	if calls := s1.peer.Token - s0.peer.Token; calls != 1 {
		t.Errorf("Entra token calls = %d, want 1", calls)
	}
	if trs := s1.trs - s0.trs; trs != 1 {
		t.Errorf("TokenRequests bound to the pod = %d, want 1", trs)
	}
}

// Entra failing: a pod with a cached token keeps it (raw and through
// azidentity), a new pod gets a retryable 503 with Retry-After, and once
// Entra is back the new pod is served its own token.
func (w *azWorld) testEntraDown(t *testing.T) {
	sa := azSA{ns: "outage", name: "svc", clientID: azClientOutage, admit: true}
	w.serviceAccount(t, sa)
	cached := w.pod(t, "outage", "cached-1", "svc")
	res := "https://outage.vault.example"
	out, err := w.clients()[0].run(t, cached, res, sa.clientID, azClientShop)
	if err != nil {
		t.Fatal(err)
	}
	if out.MI.Token == "" {
		t.Fatalf("before the outage: %s", out.MI.Error)
	}
	first := out.MI.Token
	w.checkToken(t, "cached", cached, sa, first, res)

	for _, f := range []struct {
		name  string
		fault entra.Fault
	}{
		{"Refused", entra.Fault{Refuse: true}},
		{"503", entra.Fault{Status: http.StatusServiceUnavailable}},
		{"Reset", entra.Fault{Reset: true}},
	} {
		t.Run(f.name, func(t *testing.T) {
			if err := w.entra.SetFault(f.fault); err != nil {
				t.Fatal(err)
			}
			restored := false
			defer func() {
				if !restored {
					w.entra.SetFault(entra.Fault{})
				}
			}()
			for range 3 {
				r := w.get(t, cached, res, "", azHeader)
				if r.status != http.StatusOK {
					t.Fatalf("cached pod during the outage: %d %s", r.status, r.body)
				}
				if r.token(t).AccessToken != first {
					t.Errorf("cached pod got another token during the outage")
				}
			}
			// A real client in the cached pod, during the outage.
			out, err := w.clients()[1].run(t, cached, res, sa.clientID, azClientShop)
			if err != nil {
				t.Fatal(err)
			}
			if out.MI.Token != first {
				t.Errorf("python in the cached pod during the outage: token %t (the cached one: %t), error %q",
					out.MI.Token != "", out.MI.Token == first, out.MI.Error)
			}
			fresh := w.pod(t, "outage", "fresh-"+strings.ToLower(f.name), "svc")
			r := w.get(t, fresh, res, "", azHeader)
			code, desc := r.errorCode(t)
			if r.status != http.StatusServiceUnavailable || code != "ServiceUnavailable" {
				t.Fatalf("new pod during the outage: %d %s, want 503 ServiceUnavailable", r.status, r.body)
			}
			if ra := r.header.Get("Retry-After"); ra == "" {
				t.Errorf("503 without Retry-After")
			} else {
				t.Logf("new pod: 503 %s, Retry-After %s: %s", code, ra, desc)
			}

			if err := w.entra.SetFault(entra.Fault{}); err != nil {
				t.Fatal(err)
			}
			restored = true
			t0 := time.Now()
			deadline := t0.Add(60 * time.Second)
			for {
				r = w.get(t, fresh, res, "", azHeader)
				if r.status == http.StatusOK {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("new pod not served within 60s of Entra's recovery: %d %s", r.status, r.body)
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("new pod served %v after Entra recovered", time.Since(t0).Round(time.Millisecond))
			w.checkToken(t, "after recovery", fresh, sa, r.token(t).AccessToken, res)
		})
	}
}

// After everything above, the agent's debug log and its metrics hold none
// of the tokens: the ServiceAccount tokens Entra received as assertions and
// the access tokens it issued.
func (w *azWorld) testNoTokenLeaked(t *testing.T) {
	secrets := w.entra.Secrets()
	if len(secrets) < 20 {
		t.Fatalf("only %d tokens recorded by the peer; the suite did not exercise the agent", len(secrets))
	}
	checkNoSecret(t, w.agent, append(secrets, w.sts.Secrets()...))
}

// A second agent on the same node with --azure-prefetch-resources: a new
// pod whose ServiceAccount names a client ID gets a token for the resource
// before it asks (the peer issued it, for that pod), and its first request,
// raw and through azidentity, is answered from it without an Entra call.
// Pods without a client ID get nothing prefetched.
func (w *azWorld) testPrefetch(t *testing.T) {
	const res = "https://prefetch.vault.example"
	ctx := context.Background()
	cfg := w.agent.Config
	cfg.Name, cfg.Listen = "agent-azure-prefetch", net.JoinHostPort(netns.ServiceAddr4.String(), "0")
	cfg.ExtraArgs = append(append([]string{}, cfg.ExtraArgs...), "--azure-prefetch-resources="+res)
	a, err := harness.StartAgent(ctx, cfg)
	if err != nil {
		t.Fatalf("StartAgent with prefetch: %v", err)
	}
	defer a.Stop()
	endpoint := "http://" + a.Listen + azTokenPath
	defer func() {
		if t.Failed() {
			t.Logf("prefetching agent's log tail:\n%s", a.LogTail(40))
		}
	}()

	sa := azSA{ns: "warm", name: "web", clientID: azClientWarm, admit: true}
	w.serviceAccount(t, sa)
	w.serviceAccount(t, azSA{ns: "warm", name: "plain"})
	p := w.pod(t, "warm", "web-1", "web")
	plain := w.pod(t, "warm", "plain-1", "plain")
	uid := string(p.Pod.UID)
	deadline := time.Now().Add(30 * time.Second)
	for w.entra.PodCalls(uid) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no token prefetched for pod %s within 30s", p.Pod.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("prefetched for %s: %d tokens; TokenRequests by audience %v", p.Pod.Name, w.entra.PodCalls(uid), w.tokenRequestsByAudience(t, p.Pod))

	// The agent prefetches for every other pod with a client ID too, so
	// the figures are the pod's: tokens the peer issued for it.
	before := w.entra.PodCalls(uid)
	t0 := time.Now()
	r := w.getAt(t, endpoint, p, res, "", azHeader)
	tok := r.token(t).AccessToken
	is := w.checkToken(t, "prefetched", p, sa, tok, res)
	if !is.IssuedAt.Before(t0) {
		t.Errorf("the token was issued at %v, not before the first request (%v)", is.IssuedAt, t0)
	}
	cmd := p.Exec(ctx, w.envAt(endpoint), w.azauth, res, sa.clientID, azClientShop)
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("azauth: %v", err)
	}
	var out azOut
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("azauth printed %q: %v", b, err)
	}
	if out.MI.Token != tok {
		t.Errorf("azidentity did not get the prefetched token: %q", out.MI.Error)
	}
	// Its other steps (res2, res3) are not prefetched: two tokens, none
	// for res.
	if n := w.entra.PodCalls(uid) - before; n != 2 {
		t.Errorf("%d tokens issued for the pod for the first request and azidentity's three steps, want 2 (res2, res3)", n)
	}
	t.Logf("first request and azidentity served the prefetched token; %d tokens issued, for its two other resources", w.entra.PodCalls(uid)-before)
	if n := w.entra.PodCalls(string(plain.Pod.UID)); n != 0 {
		t.Errorf("%d tokens prefetched for a pod without a client ID", n)
	}
	checkNoSecret(t, a, w.entra.Secrets())
}
