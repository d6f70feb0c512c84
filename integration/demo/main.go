// Command demo shows the credential broker's whole scope on one machine, no
// cluster needed: it starts etcd and kube-apiserver, the verifying peers
// that stand in for the clouds (AWS STS, Google STS with IAM Credentials,
// Entra ID: each checks the pod-bound ServiceAccount token against the
// cluster's keys and that the pod still exists), the agent for all three
// clouds, and the mutating webhook. Then it creates a pod whose manifest
// has no variable at all: the webhook adds them at admission, and the AWS
// CLI, Google's google-auth and Microsoft's azure-identity inside the pod
// each get the identity its ServiceAccount names. Last, the pod calls a
// second pod with a token from the agent's /v1/token, and the receiver
// (pkg/verify) names the caller. Pods are network namespaces whose traffic
// carries the pod's address; the demo plays the scheduler and kubelet.
// Every step is printed. It builds what is missing (kube-apiserver and
// etcd, bin/agent) and removes everything it started on exit, also on
// Ctrl-C.
//
// Run it as root: `make demo`, or `go run ./integration/demo` from the work
// tree. With -wait it keeps everything running until Ctrl-C, so that you
// can try commands inside the pod yourself.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/credbroker/agent/integration/entra"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
)

const (
	nodeName  = "demo-node"
	namespace = "demo"
	saName    = "app"
	podName   = "app"
	nsPrefix  = "cbdemo"
	// Pod B, the receiver, and the audience it accepts.
	receiverName  = "orders"
	audiencePfx   = "https://svc.demo/"
	audience      = audiencePfx + "orders"
	roleARN       = "arn:aws:iam::111122223333:role/demo-app"
	gcpProject    = "demo-project"
	gcpAccount    = "demo-app@demo-project.iam.gserviceaccount.com"
	azureTenant   = "de300000-0000-4000-8000-00000000000a"
	azureClientID = "de300000-0000-4000-8000-0000000000c1"
	// azureHeader is what the agent wants in X-IDENTITY-HEADER and the
	// webhook puts in IDENTITY_HEADER: an SSRF guard, not a secret.
	azureHeader   = "credbroker-demo"
	azureResource = "https://vault.azure.net"
	// debianPython has Debian's python3-azure; gcloud's bundled
	// google-auth runs on it too.
	debianPython  = "/usr/bin/python3"
	gcloudPyPath  = "/usr/lib/google-cloud-sdk/lib/third_party"
	ipForwardPath = "/proc/sys/net/ipv4/ip_forward"
)

const googleScript = `
import json, google.auth, google.auth.transport.requests as tr
creds, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
creds.refresh(tr.Request())
print(json.dumps({"project": project, "email": creds.service_account_email, "token": creds.token}))
`

const azureScript = `
import json, sys
from azure.identity import ManagedIdentityCredential
t = ManagedIdentityCredential().get_token(sys.argv[1] + "/.default")
print(json.dumps({"token": t.token, "expires_on": t.expires_on}))
`

func main() {
	wait := flag.Bool("wait", false, "keep everything running until Ctrl-C")
	keepDir := flag.Bool("keep", false, "keep the work directory (logs, kubeconfigs) after exit")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	err := run(ctx, *wait, *keepDir)
	if err != nil && ctx.Err() != nil {
		fmt.Println("\n==> interrupted; everything was cleaned up")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "\ndemo failed:", err)
		os.Exit(1)
	}
	fmt.Printf("\n==> done in %v\n", time.Since(start).Round(100*time.Millisecond))
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }
func note(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }

func run(ctx context.Context, wait, keepDir bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo must run as root (it creates network namespaces and puts 169.254.170.23 on lo)")
	}
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}

	step("checking what needs building")
	binDir, err := ensureK8sBin(ctx, root)
	if err != nil {
		return err
	}
	note("kube-apiserver and etcd: %s", binDir)
	agentBin, err := ensureAgent(ctx, root)
	if err != nil {
		return err
	}
	note("agent (also the webhook: agent webhook): %s", agentBin)
	for _, c := range []string{"aws", "curl", "ip", "kubectl", debianPython} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s is not on PATH: %w", c, err)
		}
	}
	if _, err := os.Stat(filepath.Join(gcloudPyPath, "google/auth")); err != nil {
		return fmt.Errorf("google-auth of the Google Cloud CLI not found under %s: %w", gcloudPyPath, err)
	}
	if out, err := exec.CommandContext(ctx, debianPython, "-c", "import azure.identity").CombinedOutput(); err != nil {
		return fmt.Errorf("%s cannot import azure.identity (apt-get install python3-azure): %w: %s", debianPython, err, out)
	}
	// The webhook's variables name the agent at 169.254.170.23 on port 80,
	// as on a node.
	if l, err := net.Listen("tcp", harness.DefaultAgentListen); err != nil {
		return fmt.Errorf("the agent needs %s, which is taken (another demo or test running?): %w", harness.DefaultAgentListen, err)
	} else {
		l.Close()
	}

	dir, err := os.MkdirTemp("", "credbroker-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if keepDir {
			fmt.Printf("    work directory kept: %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	// Cleanups run in reverse order, also after an error or Ctrl-C.
	var cleanups []func()
	defer func() {
		step("cleaning up")
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		note("stopped all processes, removed the pods' network namespaces")
	}()

	step("putting the agent's link-local address 169.254.170.23 on lo")
	note("on a real node the agent's init container does this; pods reach it through their default route")
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		return err
	}
	// Pod to pod goes through this host, as on a node's pod network.
	if b, err := os.ReadFile(ipForwardPath); err == nil && strings.TrimSpace(string(b)) == "0" {
		if err := os.WriteFile(ipForwardPath, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("turning on IPv4 forwarding for pod-to-pod traffic: %w", err)
		}
		note("turned on net.ipv4.ip_forward for pod-to-pod traffic (back to 0 at exit)")
		cleanups = append(cleanups, func() { _ = os.WriteFile(ipForwardPath, []byte("0"), 0o644) })
	}

	step("starting etcd and kube-apiserver (no scheduler, no kubelet: the demo plays their parts)")
	cp, err := harness.StartControlPlane(ctx, harness.ControlPlaneConfig{Dir: dir, BinDir: binDir})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, cp.Stop)
	note("API server:          %s", cp.URL)
	note("token issuer (OIDC): %s/.well-known/openid-configuration", cp.Issuer)
	note("admin kubeconfig:    %s", cp.AdminKubeconfig)

	sub := "system:serviceaccount:" + namespace + ":" + saName
	step("starting the clouds' stand-ins on %s; each trusts this cluster's issuer, verifies every token against its keys and asks the API server whether the token's pod still exists", netns.ServiceAddr4)
	sts, err := cp.StartSTS(ctx, harness.STSConfig{Roles: map[string]string{roleARN: sub}})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { sts.Close() })
	note("AWS STS (integration/oidcsts):                         %s  role %s trusts %s", sts.URL(), roleARN, sub)
	gsts, err := cp.StartGoogleSTS(ctx, harness.GoogleSTSConfig{Impersonation: map[string][]string{gcpAccount: {sub}}})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { gsts.Close() })
	note("Google STS + IAM Credentials (integration/googlests): %s  %s may be impersonated by %s", gsts.URL(), gcpAccount, sub)
	ent, err := cp.StartEntra(ctx, harness.EntraConfig{Credentials: map[entra.App][]string{{Tenant: azureTenant, ClientID: azureClientID}: {sub}}})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { ent.Close() })
	note("Entra ID (integration/entra):                          %s  application %s federates %s", ent.URL(), azureClientID, sub)

	step("giving the agent its identity: deploy/daemonset/rbac.yaml")
	kc := filepath.Join(dir, "agent.kubeconfig")
	if err := cp.AgentKubeconfig(ctx, filepath.Join(root, "deploy/daemonset/rbac.yaml"), kc); err != nil {
		return err
	}
	// The demo's token is bound to no pod, so the agent cannot act as a
	// node and falls back to the broad RBAC, which AgentKubeconfig adds.
	note("ServiceAccount %s/%s may: list/watch serviceaccounts; and, from deploy/daemonset/broad-rbac (the agent's token here is bound to no pod, so it cannot act as its node): get/list/watch pods, create serviceaccounts/token, create/patch events",
		harness.AgentNamespace, harness.AgentServiceAccount)

	// The clouds' flags, the same for the agent and the webhook (the chart
	// sets both from the same values).
	cloudFlags := []string{
		"--gcp-workload-identity-provider=" + gsts.Provider(),
		"--gcp-project-id=" + gcpProject,
		"--azure-tenant-id=" + azureTenant,
		"--azure-identity-header=" + azureHeader,
	}
	step("starting the agent on %s for node %s: AWS, GCP, Azure and pod tokens for audiences under %s", harness.DefaultAgentListen, nodeName, audiencePfx)
	agent, err := harness.StartAgent(ctx, harness.AgentConfig{
		Binary: agentBin, Dir: dir, Kubeconfig: kc, NodeName: nodeName, STSEndpoint: sts.URL(), LogLevel: "info",
		ExtraArgs: append(append([]string{}, cloudFlags...),
			"--gcp-sts-endpoint="+gsts.URL(), "--gcp-iamcredentials-endpoint="+gsts.URL(),
			"--azure-authority-host="+ent.URL(), "--token-audience-prefix="+audiencePfx),
	})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, agent.Stop)
	note("bin/agent %s", strings.Join(agent.Process.Cmd.Args[1:], " "))
	note("ready (%s/readyz); log: %s", agent.ProbeURL, agent.Process.LogPath)

	step("starting the webhook (agent webhook) with the same cloud flags, registered with deploy/webhook's MutatingWebhookConfiguration")
	wkc := filepath.Join(dir, "webhook.kubeconfig")
	if err := cp.WebhookKubeconfig(ctx, wkc); err != nil {
		return err
	}
	hook, err := cp.StartWebhook(ctx, harness.WebhookConfig{Binary: agentBin, Dir: dir, Kubeconfig: wkc, ExtraArgs: append([]string{"--log-format=text"}, cloudFlags...)})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, hook.Stop)
	note("bin/agent %s", strings.Join(hook.Process.Cmd.Args[1:], " "))
	note("the API server calls %s for every pod CREATE (failurePolicy Ignore: a webhook that is down never blocks a pod)", hook.URL)
	note("it made its own CA and serving certificate and put the CA into the configuration's caBundle before serving; ready only then")

	step("the application team's whole onboarding: identities on the ServiceAccount, nothing in the pod")
	saYAML := harness.IdentityManifest(namespace, saName, harness.Identities{
		AWSRole: roleARN, GCPServiceAccount: gcpAccount, AzureClientID: azureClientID, TokenAudiences: audience,
	}) + fmt.Sprintf(`---
apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s, namespace: %[1]s}
`, namespace, receiverName)
	for _, l := range strings.Split(strings.TrimSpace(saYAML), "\n") {
		note("%s", l)
	}
	saFile := filepath.Join(dir, "serviceaccounts.yaml")
	if err := os.WriteFile(saFile, []byte(saYAML), 0o600); err != nil {
		return err
	}
	if out, err := cp.Kubectl(ctx, "apply", "-f", saFile); err != nil {
		return err
	} else {
		note("kubectl apply: %s", strings.Join(strings.Fields(string(out)), " "))
	}

	ip := netip.MustParseAddr("10.244.0.10")
	step("creating pod %s/%s (ServiceAccount %s) on %s with IP %s; its manifest's container has no env at all", namespace, podName, saName, nodeName, ip)
	note("a network namespace with a veth pair stands in for the container, so its traffic really comes from %s", ip)
	_ = netns.Cleanup(ctx, nsPrefix)
	cleanups = append(cleanups, func() { _ = netns.Cleanup(context.Background(), nsPrefix) })
	app, err := createPod(ctx, cp, nsPrefix+"-1", podName, saName, ip)
	if err != nil {
		return err
	}
	note("as the API server stored it, after admission (%s):", "kubectl get pod "+podName+" -o jsonpath='{.spec.containers[0].env}'")
	admitted := app.obj.Spec.Containers[0].Env
	if len(admitted) == 0 {
		return errors.New("the pod was admitted without variables: the webhook did not wire it (its log: " + hook.Process.LogPath + ")")
	}
	for _, e := range admitted {
		note("  %s=%s", e.Name, e.Value)
	}
	note("the webhook logged: %s", lastLine(hook.LogTail(5), "wired pod"))

	home, err := os.MkdirTemp(dir, "home-")
	if err != nil {
		return err
	}
	// The container's environment: what admission gave it, and for the
	// AWS CLI where this machine's STS is (a real cluster has the real
	// one) and the region. No access keys, no token file, HOME empty.
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LANG=C.UTF-8",
		"AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=us-east-1", "AWS_ENDPOINT_URL_STS=" + sts.URL(), "AWS_EC2_METADATA_DISABLED=true",
		"CLOUDSDK_CONFIG=" + filepath.Join(home, "gcloud"),
	}
	for _, k := range []string{"PYENV_ROOT", "PYENV_VERSION"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for _, e := range admitted {
		env = append(env, e.Name+"="+e.Value)
	}
	note("the demo runs the pod's programs with those variables, plus AWS_REGION and AWS_ENDPOINT_URL_STS=%s (where this machine's STS is), and an empty HOME", sts.URL())

	step("inside the pod: aws sts get-caller-identity (the AWS CLI's default chain finds AWS_CONTAINER_CREDENTIALS_FULL_URI)")
	out, err := app.exec(ctx, env, "aws", "sts", "get-caller-identity", "--output", "json")
	if err != nil {
		return err
	}
	writeIndented(out)
	note("AWS STS verified %d token(s) bound to pod %s/%s (UID %s) and answered with the role on its ServiceAccount", sts.PodCalls(string(app.obj.UID)), namespace, podName, app.obj.UID)

	step("inside the pod: Python google-auth, google.auth.default() (it finds the metadata server from GCE_METADATA_HOST)")
	out, err = app.exec(ctx, append(env, "PYTHONPATH="+gcloudPyPath), debianPython, "-c", googleScript)
	if err != nil {
		return err
	}
	var g struct{ Project, Email, Token string }
	if err := json.Unmarshal(out, &g); err != nil {
		return fmt.Errorf("google-auth's answer %q: %w", out, err)
	}
	note("project %s, service account %s, access token (%d characters, not shown)", g.Project, g.Email, len(g.Token))
	is, ok := gsts.Lookup(g.Token)
	if !ok || is.PodUID != string(app.obj.UID) {
		return fmt.Errorf("the Google peer did not mint the pod's access token for pod %s (found %v: %+v)", app.obj.UID, ok, is)
	}
	note("Google STS + IAM Credentials minted it: %s token for %s, from the token of %s, pod %s/%s (UID %s)", is.Kind, is.Email, is.Subject, is.Namespace, is.PodName, is.PodUID)

	step("inside the pod: Python azure-identity, ManagedIdentityCredential().get_token(%q) (it finds IDENTITY_ENDPOINT and IDENTITY_HEADER)", azureResource+"/.default")
	out, err = app.exec(ctx, env, debianPython, "-c", azureScript, azureResource)
	if err != nil {
		return err
	}
	var a struct {
		Token     string `json:"token"`
		ExpiresOn int64  `json:"expires_on"`
	}
	if err := json.Unmarshal(out, &a); err != nil {
		return fmt.Errorf("azure-identity's answer %q: %w", out, err)
	}
	note("access token (%d characters, not shown), expires %s", len(a.Token), time.Unix(a.ExpiresOn, 0).UTC().Format(time.RFC3339))
	ai, ok := ent.Lookup(a.Token)
	if !ok || ai.PodUID != string(app.obj.UID) {
		return fmt.Errorf("the Entra peer did not mint the pod's token for pod %s (found %v: %+v)", app.obj.UID, ok, ai)
	}
	note("Entra ID minted it: application %s in tenant %s for %s, from the client assertion of %s, pod %s/%s (UID %s)", ai.ClientID, ai.Tenant, ai.Resource, ai.Subject, ai.Namespace, ai.PodName, ai.PodUID)

	ipB := netip.MustParseAddr("10.244.0.11")
	step("creating a second pod %s/%s (ServiceAccount %s, no cloud identity) with IP %s, serving on :8080", namespace, receiverName, receiverName, ipB)
	orders, err := createPod(ctx, cp, nsPrefix+"-2", receiverName, receiverName, ipB)
	if err != nil {
		return err
	}
	note("admitted with %d variables: its ServiceAccount names no identity, so the webhook left it alone", len(orders.obj.Spec.Containers[0].Env))
	srv, recvURL, err := startReceiver(ctx, cp, orders, audience, sub)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = srv.Close() })
	note("its program accepts tokens for audience %s from %s only, checked with pkg/verify against the API server's discovery keys", audience, sub)

	tokenURL := "http://169.254.170.23/v1/token?audience=" + url.QueryEscape(audience)
	step("inside pod %s: curl -H 'Accept: text/plain' %s", podName, tokenURL)
	out, err = app.exec(ctx, env, "curl", "-sS", "--fail-with-body", "-H", "Accept: text/plain", tokenURL)
	if err != nil {
		return err
	}
	tok := strings.TrimSpace(string(out))
	c := claims(tok)
	note("a ServiceAccount token (%d characters, not shown), claims: sub=%v aud=%v, bound to pod %v", len(tok), c["sub"], c["aud"], podClaim(c))

	step("inside pod %s: curl -H 'Authorization: Bearer <that token>' %s/orders", podName, recvURL)
	out, err = app.exec(ctx, env, "curl", "-sS", "--fail-with-body", "-H", "Authorization: Bearer "+tok, recvURL+"/orders")
	if err != nil {
		return err
	}
	note("%s answered: %s", receiverName, strings.TrimSpace(string(out)))

	step("what the agent and the webhook counted (their /metrics; their logs, kept with -keep, hold no token and no key: %s, %s)", agent.Process.LogPath, hook.Process.LogPath)
	if text, err := agent.Metrics(ctx); err == nil {
		printMetrics(text, "credbroker_requests_total{", "credbroker_upstream_calls_total{")
	}
	if _, body, err := harness.HostGet(ctx, hook.ProbeURL+"/metrics"); err == nil {
		printMetrics(string(body), "credbroker_webhook_admissions_total{")
	}

	if wait {
		step("everything keeps running; press Ctrl-C to stop and clean up. Try:")
		note("ip netns exec %s env -i %s aws sts get-caller-identity", app.ns.Name(), shellEnv(env))
		note("kubectl --kubeconfig %s get pod -n %s %s -o yaml", cp.AdminKubeconfig, namespace, podName)
		<-ctx.Done()
		return nil
	}
	return nil
}

// printMetrics prints the non-zero samples of the metrics named.
func printMetrics(text string, prefixes ...string) {
	for _, l := range strings.Split(text, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) && !strings.HasSuffix(l, " 0") {
				note("%s", l)
			}
		}
	}
}

// podClaim is the pod a ServiceAccount token is bound to, from its claims.
func podClaim(c map[string]any) string {
	k, _ := c["kubernetes.io"].(map[string]any)
	p, _ := k["pod"].(map[string]any)
	if p == nil {
		return "(none)"
	}
	return fmt.Sprintf("%v (UID %v)", p["name"], p["uid"])
}

// lastLine returns the last line of text containing s.
func lastLine(text, s string) string {
	lines := strings.Split(text, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return strings.TrimSpace(lines[i])
		}
	}
	return fmt.Sprintf("(no line with %q)", s)
}

func writeIndented(b []byte) { _, _ = indent(os.Stdout).Write(b) }

// ensureK8sBin builds kube-apiserver and etcd unless they are cached.
func ensureK8sBin(ctx context.Context, root string) (string, error) {
	if dir, err := harness.K8sBinDir(); err == nil {
		return dir, nil
	}
	note("kube-apiserver and etcd are not built yet: building them from their Go modules (about 11 minutes once; cached afterwards)")
	cmd := exec.CommandContext(ctx, filepath.Join(root, "integration/k8sbin/build.sh"))
	cmd.Stderr = indent(os.Stderr)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building kube-apiserver and etcd: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ensureAgent builds bin/agent with `make build` unless it exists.
func ensureAgent(ctx context.Context, root string) (string, error) {
	if p, err := harness.AgentBinary(); err == nil {
		return p, nil
	}
	note("bin/agent is missing: running make build")
	cmd := exec.CommandContext(ctx, "make", "-C", root, "build")
	cmd.Stdout, cmd.Stderr = indent(os.Stdout), indent(os.Stderr)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("make build: %w", err)
	}
	return harness.AgentBinary()
}

func shellEnv(env []string) string {
	var b strings.Builder
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		if k == "PATH" || strings.HasPrefix(k, "AWS_") || k == "HOME" || strings.HasPrefix(k, "PYENV") || strings.HasPrefix(k, "GCE_") || strings.HasPrefix(k, "IDENTITY_") {
			fmt.Fprintf(&b, "%s=%q ", k, v)
		}
	}
	return strings.TrimSpace(b.String())
}

// indent prefixes every line written to w with four spaces.
func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (i *indenter) Write(p []byte) (int, error) {
	for _, b := range p {
		if i.bol {
			if _, err := i.w.Write([]byte("    ")); err != nil {
				return 0, err
			}
		}
		if _, err := i.w.Write([]byte{b}); err != nil {
			return 0, err
		}
		i.bol = b == '\n'
	}
	return len(p), nil
}
