package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// WebhookServiceAccount is the webhook's identity in deploy/webhook/rbac.yaml
// (in AgentNamespace).
const WebhookServiceAccount = "credbroker-webhook"

// WebhookKubeconfig gives `agent webhook` exactly the identity and RBAC it
// has in a cluster: it applies deploy/webhook/rbac.yaml with kubectl,
// requests a token for its ServiceAccount and writes a kubeconfig with it
// to path.
func (cp *ControlPlane) WebhookKubeconfig(ctx context.Context, path string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	return cp.serviceAccountKubeconfig(ctx, path, WebhookServiceAccount, filepath.Join(root, "deploy/webhook/rbac.yaml"))
}

// registerWebhook applies deploy/webhook's MutatingWebhookConfiguration
// with its clientConfig pointed at url.
func (cp *ControlPlane) registerWebhook(ctx context.Context, dir, url string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy/webhook/mutatingwebhook.yaml"))
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(b, &obj); err != nil {
		return fmt.Errorf("parsing deploy/webhook/mutatingwebhook.yaml: %w", err)
	}
	hooks, _ := obj["webhooks"].([]any)
	if len(hooks) == 0 {
		return fmt.Errorf("deploy/webhook/mutatingwebhook.yaml has no webhooks")
	}
	for _, w := range hooks {
		w.(map[string]any)["clientConfig"] = map[string]any{"url": url}
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, "mutatingwebhook.json")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return err
	}
	if _, err := cp.Kubectl(ctx, "apply", "-f", path); err != nil {
		return fmt.Errorf("registering the webhook: %w", err)
	}
	return nil
}

// WebhookConfig configures StartWebhook.
type WebhookConfig struct {
	// Binary is the agent executable. Default AgentBinary() (bin/agent).
	Binary string
	// Dir receives the log (logs/<Name>.log). Required.
	Dir string
	// Name names the process and its log. Default "webhook".
	Name string
	// Kubeconfig is the webhook's kubeconfig (see WebhookKubeconfig). Required.
	Kubeconfig string
	// ExtraArgs are appended to the webhook command's flags: the clouds'
	// flags, the same as the agent's.
	ExtraArgs []string
	// ReadyTimeout bounds the wait for /readyz. Default 60s.
	ReadyTimeout time.Duration
}

// Webhook is a running `agent webhook` on 127.0.0.1.
type Webhook struct {
	Process *Process
	// URL is its admission endpoint, https://127.0.0.1:PORT/mutate.
	URL string
	// ProbeURL serves /metrics, /healthz and /readyz.
	ProbeURL string
}

// StartWebhook registers deploy/webhook's MutatingWebhookConfiguration
// with its clientConfig pointed at https://127.0.0.1:PORT/mutate (the API
// server runs on this host and no Service reaches a process here; rules,
// selectors, failurePolicy and timeout are as shipped), starts `agent
// webhook` there with a self-issued certificate naming 127.0.0.1, which it
// publishes into that configuration's caBundle, and waits until /readyz
// answers 200: the webhook is ready only once its CA is published.
func (cp *ControlPlane) StartWebhook(ctx context.Context, cfg WebhookConfig) (*Webhook, error) {
	var err error
	if cfg.Binary == "" {
		if cfg.Binary, err = AgentBinary(); err != nil {
			return nil, err
		}
	}
	if cfg.Dir == "" || cfg.Kubeconfig == "" {
		return nil, fmt.Errorf("harness: WebhookConfig needs Dir and Kubeconfig")
	}
	if cfg.Name == "" {
		cfg.Name = "webhook"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	w := &Webhook{}
	err = withFreshPorts([]string{"127.0.0.1", "127.0.0.1"}, func(ports []int) (*Process, error) {
		port, mport := ports[0], ports[1]
		w.URL = "https://127.0.0.1:" + strconv.Itoa(port) + "/mutate"
		w.ProbeURL = "http://127.0.0.1:" + strconv.Itoa(mport)
		if err := cp.registerWebhook(ctx, cfg.Dir, w.URL); err != nil {
			return nil, err
		}
		args := append([]string{"webhook",
			"--kubeconfig=" + cfg.Kubeconfig,
			"--listen=127.0.0.1:" + strconv.Itoa(port),
			"--metrics-listen=127.0.0.1:" + strconv.Itoa(mport),
			"--tls-ip-san=127.0.0.1",
			"--namespace=" + AgentNamespace,
			// The API server here is the only one and sees the caBundle at
			// once; the default 10 s is for API servers behind a watch.
			"--ca-publish-delay=1s",
		}, cfg.ExtraArgs...)
		p, err := StartProcess(cfg.Name, filepath.Join(cfg.Dir, "logs", cfg.Name+".log"),
			[]string{"PATH=" + os.Getenv("PATH")}, cfg.Binary, args...)
		if err != nil {
			return nil, err
		}
		w.Process = p
		return p, w.waitReady(ctx, cfg.ReadyTimeout)
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Webhook) waitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	err := waitFor(ctx, w.Process, timeout, 100*time.Millisecond, func(context.Context) (bool, string) {
		return status200(client.Get(w.ProbeURL + "/readyz"))
	})
	if err != nil {
		w.Stop()
	}
	return err
}

// Stop stops the webhook.
func (w *Webhook) Stop() { w.Process.Stop(10 * time.Second) }

// LogTail returns the last n lines of the webhook's log.
func (w *Webhook) LogTail(n int) string { return w.Process.LogTail(n) }

// Identities are what an application team's ServiceAccount names, one per
// cloud, with the agent's annotations; empty ones are left out.
type Identities struct {
	AWSRole           string // eks.amazonaws.com/role-arn
	GCPServiceAccount string // iam.gke.io/gcp-service-account
	AzureClientID     string // azure.workload.identity/client-id
	TokenAudiences    string // credbroker.io/token-audiences
}

// IdentityManifest is the YAML of a Namespace and a ServiceAccount in it
// naming ids: the whole of an application team's onboarding, to which the
// caller appends its workloads (after "---").
func IdentityManifest(namespace, serviceAccount string, ids Identities) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n", namespace)
	fmt.Fprintf(&b, "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: %s\n  namespace: %s\n  annotations:\n", serviceAccount, namespace)
	for _, a := range []struct{ key, value string }{
		{"eks.amazonaws.com/role-arn", ids.AWSRole},
		{"iam.gke.io/gcp-service-account", ids.GCPServiceAccount},
		{"azure.workload.identity/client-id", ids.AzureClientID},
		{"credbroker.io/token-audiences", ids.TokenAudiences},
	} {
		if a.value != "" {
			fmt.Fprintf(&b, "    %s: %s\n", a.key, a.value)
		}
	}
	return b.String()
}
