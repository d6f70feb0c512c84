//go:build integration

package node

// The webhook on the real node (issue 22): a Deployment whose manifest
// names no credential variable, run by the ReplicaSet controller, the
// scheduler, the kubelet and containerd, gets credentials from the AWS,
// Google and Azure Go SDKs, and each cloud's verifying peer minted them
// for that pod.
//
// `agent webhook` runs as a process on the host (as in integration/webhook),
// registered with deploy/webhook's MutatingWebhookConfiguration by URL
// (https://127.0.0.1:PORT/mutate): the API server runs on the host, and
// this cluster has no kube-proxy to take it to a Service. The agent
// DaemonSet is switched to all three clouds for the test by an overlay an
// operator would write (the clouds' flags and the token audiences the
// admission policy allows) and switched back at the end.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/entra"
	"github.com/credbroker/agent/integration/googlests"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/node/workload/lines"
)

const (
	hookNS          = "hooked"
	hookSA          = "shop"
	hookDeployment  = "shop"
	hookGCPProject  = "credbroker-node"
	hookGCPAccount  = "shop@credbroker-node.iam.gserviceaccount.com"
	hookAzureTenant = "7f000000-0000-0000-0000-0000000000aa"
	hookAzureClient = "7f000000-0000-0000-0000-0000000000c1"
	hookAzureHeader = "node-suite-header"
	hookAzureRes    = "https://vault.azure.net"
)

func TestWebhookDeploymentThreeClouds(t *testing.T) {
	w := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp := w.node.CP
	sub := "system:serviceaccount:" + hookNS + ":" + hookSA

	// The peers, on the host address pods and the agent reach.
	gsts, err := cp.StartGoogleSTS(ctx, harness.GoogleSTSConfig{
		Addr:          HostAddr.String() + ":0",
		Impersonation: map[string][]string{hookGCPAccount: {sub}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gsts.Close() })
	ent, err := cp.StartEntra(ctx, harness.EntraConfig{
		Addr:        HostAddr.String() + ":0",
		Credentials: map[entra.App][]string{{Tenant: hookAzureTenant, ClientID: hookAzureClient}: {sub}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ent.Close() })

	cloudFlags := []string{
		"--gcp-workload-identity-provider=" + gsts.Provider(),
		"--gcp-project-id=" + hookGCPProject,
		"--azure-tenant-id=" + hookAzureTenant,
		"--azure-identity-header=" + hookAzureHeader,
	}
	w.agentWithAllClouds(ctx, t, append(slices.Clone(cloudFlags),
		"--gcp-sts-endpoint="+gsts.URL(),
		"--gcp-iamcredentials-endpoint="+gsts.URL(),
		"--azure-authority-host="+ent.URL(),
	), []string{googlests.Audience(gsts.Provider()), entra.TokenAudience})

	// The webhook, with the agent's cloud flags (the chart sets both from
	// the same values).
	dir := t.TempDir()
	kc := filepath.Join(dir, "webhook.kubeconfig")
	if err := cp.WebhookKubeconfig(ctx, kc); err != nil {
		t.Fatal(err)
	}
	hook, err := cp.StartWebhook(ctx, harness.WebhookConfig{Dir: dir, Kubeconfig: kc, ExtraArgs: cloudFlags})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Other tests' pods must not meet a webhook that is gone.
		if _, err := cp.Kubectl(context.Background(), "delete", "mutatingwebhookconfiguration", "credbroker-webhook", "--ignore-not-found"); err != nil {
			t.Errorf("removing the webhook's registration: %v", err)
		}
		if t.Failed() {
			t.Logf("webhook log tail:\n%s", hook.LogTail(30))
		}
		hook.Stop()
	})

	// The application team: a ServiceAccount naming one identity per
	// cloud, and a Deployment that says nothing about credentials (the
	// region and the STS endpoint say where AWS is: this AWS is a peer).
	role := roleARN("hooked-shop")
	w.sts.TrustRole(role, sub)
	manifest := harness.IdentityManifest(hookNS, hookSA, harness.Identities{
		AWSRole: role, GCPServiceAccount: hookGCPAccount, AzureClientID: hookAzureClient,
	}) + fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[3]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[3]s}}
  template:
    metadata: {labels: {app: %[3]s}}
    spec:
      serviceAccountName: %[2]s
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: %[4]s
          args: [-clouds, "aws,gcp,azure", -azure-resource, %[5]s]
          env:
            - {name: AWS_REGION, value: eu-west-1}
            - {name: AWS_ENDPOINT_URL_STS, value: %[6]q}
`, hookNS, hookSA, hookDeployment, workloadImage, hookAzureRes, w.sts.URL())
	mpath := filepath.Join(dir, "app.yaml")
	if err := os.WriteFile(mpath, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kubectl(ctx, "apply", "-f", mpath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = cp.Kubectl(context.Background(), "delete", "namespace", hookNS, "--wait=false")
	})

	dep, err := cp.Client.AppsV1().Deployments(hookNS).Get(ctx, hookDeployment, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if slices.Contains(allCredentialVars, e.Name) {
			t.Fatalf("the Deployment's manifest sets %s; it must set none", e.Name)
		}
	}

	pod := w.deploymentPod(ctx, t, hookNS, hookDeployment)
	env := map[string]string{}
	for _, e := range pod.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	want := map[string]string{
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": credsURL,
		"AWS_CONTAINER_AUTHORIZATION_TOKEN":  "credbroker",
		"GCE_METADATA_HOST":                  "169.254.170.23",
		"GCE_METADATA_IP":                    "169.254.170.23",
		"GCE_METADATA_ROOT":                  "169.254.170.23",
		"IDENTITY_ENDPOINT":                  "http://169.254.170.23/metadata/identity/oauth2/token",
		"IDENTITY_HEADER":                    hookAzureHeader,
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("pod %s: %s = %q, want %q (the webhook's)", pod.Name, k, env[k], v)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	pod = w.waitPhase(ctx, t, hookNS, pod.Name, 2*time.Minute, corev1.PodRunning)
	got := w.cloudsLine(ctx, t, hookNS, pod.Name)
	t.Logf("pod %s (UID %s) saw %v; AWS %s, GCP %s", pod.Name, pod.UID, got.Env, got.AWS.Identity, got.GCP.Identity)
	if !slices.Equal(got.Env, allCredentialVars) {
		t.Errorf("variables in the container: %v, want %v", got.Env, allCredentialVars)
	}
	for name, s := range map[string]*lines.CloudStep{"aws": got.AWS, "gcp": got.GCP, "azure": got.Azure} {
		if s == nil || s.Error != "" {
			t.Fatalf("%s SDK in the pod: %+v", name, s)
		}
	}

	// Each peer minted what the pod's SDK got, from a token bound to
	// this pod.
	if !strings.Contains(got.AWS.Identity, ":assumed-role/hooked-shop/") {
		t.Errorf("AWS caller %q, want the role hooked-shop", got.AWS.Identity)
	}
	if id, ok := w.sts.Lookup(got.AWS.AccessKeyID); !ok || id.PodUID != string(pod.UID) || id.RoleArn != role {
		t.Errorf("STS: access key %s was issued to %+v (found %v), want role %s for pod UID %s", got.AWS.AccessKeyID, id, ok, role, pod.UID)
	}
	if got.GCP.Identity != hookGCPAccount {
		t.Errorf("GCE metadata email %q, want %s", got.GCP.Identity, hookGCPAccount)
	}
	if is, ok := gsts.Lookup(got.GCP.Token); !ok || is.PodUID != string(pod.UID) || is.Email != hookGCPAccount || is.Kind != googlests.Impersonated {
		t.Errorf("Google STS: the pod's access token was issued as %+v (found %v), want %s impersonated for pod UID %s", is, ok, hookGCPAccount, pod.UID)
	}
	if is, ok := ent.Lookup(got.Azure.Token); !ok || is.PodUID != string(pod.UID) || is.ClientID != hookAzureClient || is.Resource != hookAzureRes {
		t.Errorf("Entra: the pod's token was issued as %+v (found %v), want client %s, resource %s, pod UID %s", is, ok, hookAzureClient, hookAzureRes, pod.UID)
	}
	if n := hookMetric(ctx, t, hook, "credbroker_webhook_admissions_total", map[string]string{"result": "mutated"}); n < 1 {
		t.Errorf("webhook admissions mutated: %v, want at least 1", n)
	}
}

var allCredentialVars = []string{
	"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
	"GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT",
	"IDENTITY_ENDPOINT", "IDENTITY_HEADER",
}

// agentWithAllClouds rolls the agent out with the GCP and Azure flags
// added and their token audiences allowed (by the admission policy, and
// to nodes by RBAC), over the world's overlay, as the chart does with
// gcp.* and azure.* set; and rolls it back when the test ends.
func (w *world) agentWithAllClouds(ctx context.Context, t *testing.T, args, audiences []string) {
	t.Helper()
	dir := filepath.Join(w.node.Dir, "overlay-clouds")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../overlay
patches:
  - target: {kind: DaemonSet, name: credbroker-agent}
    patch: |-
`)
	for _, a := range args {
		fmt.Fprintf(&b, "      - {op: add, path: /spec/template/spec/containers/0/args/-, value: %q}\n", a)
	}
	allowed := []string{"'sts.amazonaws.com'"}
	for _, a := range audiences {
		allowed = append(allowed, "'"+a+"'")
	}
	fmt.Fprintf(&b, `  - target: {kind: ValidatingAdmissionPolicy, name: credbroker-agent-token-requests}
    patch: |-
      - {op: test, path: /spec/variables/0/name, value: allowedAudiences}
      - {op: replace, path: /spec/variables/0/expression, value: %q}
`, "["+strings.Join(allowed, ", ")+"]")
	// NodeRestriction: the agent, acting as its node, may request only
	// the audiences granted to nodes by name.
	b.WriteString(`  - target: {kind: ClusterRole, name: credbroker-node-token-audiences}
    patch: |-
`)
	for _, a := range audiences {
		fmt.Fprintf(&b, "      - {op: add, path: /rules/0/resources/-, value: %q}\n", a)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := w.node.CP.Kubectl(ctx, "apply", "-k", dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := w.applyOverlay(ctx); err != nil {
			t.Errorf("rolling the agent back to the world's overlay: %v", err)
			return
		}
		if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
			t.Errorf("rolling the agent back: %v", err)
		}
	})
	if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// deploymentPod waits for the Deployment's pod and returns it as the API
// server stored it (after admission).
func (w *world) deploymentPod(ctx context.Context, t *testing.T, ns, app string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := poll(ctx, time.Minute, "a pod of Deployment "+ns+"/"+app, func() (bool, error) {
		l, err := w.node.CP.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil || len(l.Items) == 0 {
			return false, nil
		}
		pod = &l.Items[0]
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// cloudsLine waits for the workload's -clouds line in the pod's log.
func (w *world) cloudsLine(ctx context.Context, t *testing.T, ns, name string) lines.Clouds {
	t.Helper()
	var got lines.Clouds
	var last []byte
	err := poll(ctx, 90*time.Second, "the workload's line in "+ns+"/"+name, func() (bool, error) {
		raw, err := w.node.CP.Client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, nil
		}
		last = raw
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			if json.Unmarshal(sc.Bytes(), &got) == nil && got.Clouds {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, last)
	}
	return got
}

func hookMetric(ctx context.Context, t *testing.T, h *harness.Webhook, name string, labels map[string]string) float64 {
	t.Helper()
	_, body, err := harness.HostGet(ctx, h.ProbeURL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return harness.MetricSum(string(body), name, labels)
}
