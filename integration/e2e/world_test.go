//go:build integration

// Package e2e runs the agent binary against a real kube-apiserver and etcd,
// real STS peers (our token-verifying oidcsts, and moto for signed S3
// calls) and real AWS SDK clients inside simulated pods. One control plane
// and one agent are shared by all scenarios; they run in order, and the
// disruptive ones (STS down, API server restart) last.
package e2e

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
)

const (
	node      = "node-1"
	account   = oidcsts.DefaultAccountID
	nsPrefix  = "cbe2e"
	podSubnet = "10.244.1.%d" // this suite's /24; others use other ones
)

// world is what every scenario shares.
type world struct {
	*suite
	python string // the real interpreter, not a pyenv shim
	tools  tools
	// agentURL6 is the agent's credentials URL on its IPv6 address.
	agentURL6 string
}

// tools are the SDK clients, resolved once.
type tools struct {
	aws, node, callerid string
}

func setupWorld(t *testing.T) *world {
	t.Helper()
	w := &world{suite: newSuite(t, podSubnet, "ip", "kubectl", "moto_server", "aws", "python3", "node")}
	testenv.K8sBinDir(t)
	if _, err := os.Stat(filepath.Join(w.root, "integration/sdk/js/node_modules/@aws-sdk/client-sts")); err != nil {
		testenv.Unavailable(t, "JS SDK not installed; run `make integration-deps`")
	}
	if err := netns.AddHostAddr(context.Background(), netns.ServiceAddr6); err != nil {
		t.Fatalf("putting %s on lo: %v", netns.ServiceAddr6, err)
	}
	w.python = strings.TrimSpace(string(must(exec.Command("python3", "-c", "import sys; print(sys.executable)").Output())))
	w.tools.aws, _ = exec.LookPath("aws")
	w.tools.node, _ = exec.LookPath("node")
	w.tools.callerid = w.build(t, "callerid")

	w.start(t, node, nsPrefix)
	w.startAgent(t, harness.AgentConfig{
		NodeName: node,
		// The IPv6 address gets the same port as the IPv4 one.
		ExtraListen: []string{net.JoinHostPort(netns.ServiceAddr6.String(), "0")},
		ExtraArgs:   []string{"--token-audience-prefix=" + tokenAudiencePrefix},
	})
	_, port, _ := net.SplitHostPort(w.agent.Listen)
	w.agentURL6 = "http://" + net.JoinHostPort(netns.ServiceAddr6.String(), port) + "/v1/credentials"
	return w
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// roleARN is the IAM role ARN for a role name.
func roleARN(name string) string { return "arn:aws:iam::" + account + ":role/" + name }

// assumedPrefix is how the ARN of a session of role for pod ns/name starts:
// the agent names sessions <namespace>.<pod>.<hash>.
func assumedPrefix(role, ns, pod string) string {
	return "arn:aws:sts::" + account + ":assumed-role/" + role + "/" + ns + "." + pod + "."
}

// serviceAccount creates ns/name annotated with role (none if ""), and makes
// the STS trust role for exactly that ServiceAccount.
func (w *world) serviceAccount(t *testing.T, ns, name, role string) {
	t.Helper()
	arn := ""
	if role != "" {
		arn = roleARN(role)
		w.sts.TrustRole(arn, "system:serviceaccount:"+ns+":"+name)
	}
	if _, err := w.cp.CreateServiceAccount(context.Background(), ns, name, arn); err != nil {
		t.Fatal(err)
	}
}

// creds is the container credentials response.
type creds struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      string
	AccountID       string `json:"AccountId"`
}

// apiError is the agent's error body; it carries both spellings.
type apiError struct {
	LowerCode    string `json:"code"`
	LowerMessage string `json:"message"`
	Code         string `json:"Code"`
	Message      string `json:"Message"`
}

// response is one answer of the agent.
type response struct {
	status int
	header map[string][]string
	body   []byte
}

func (r response) creds(t *testing.T) creds {
	t.Helper()
	var c creds
	if err := json.Unmarshal(r.body, &c); err != nil {
		t.Fatalf("decoding credentials %q: %v", r.body, err)
	}
	return c
}

func (r response) apiError(t *testing.T) apiError {
	t.Helper()
	var e apiError
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("status %d with a body that is not JSON: %q: %v", r.status, r.body, err)
	}
	if e.Code == "" || e.Code != e.LowerCode || e.Message == "" || e.Message != e.LowerMessage {
		t.Errorf("error body %s lacks matching code/Code and message/Message", r.body)
	}
	return e
}

// fetch asks the agent for credentials from inside p.
func (w *world) fetch(t *testing.T, p *harness.Pod) response {
	t.Helper()
	return w.fetchURL(t, p, w.agent.URL)
}

func (w *world) fetchURL(t *testing.T, p *harness.Pod, url string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := must(newGet(ctx, url))
	resp, err := p.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, p.Pod.Name, err)
	}
	defer resp.Body.Close()
	return response{status: resp.StatusCode, header: resp.Header, body: must(readAll(resp.Body))}
}

// fetchUntil200 polls from p until the agent answers 200 or timeout passes;
// every answer must satisfy check (e.g. never someone else's role).
func (w *world) fetchUntil200(t *testing.T, p *harness.Pod, timeout time.Duration, check func(response)) creds {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := w.fetch(t, p)
		if check != nil {
			check(r)
		}
		if r.status == 200 {
			return r.creds(t)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not served within %v; last answer %d %s", p.Pod.Name, timeout, r.status, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// identity returns the STS identity behind credentials the agent served.
func (w *world) identity(t *testing.T, c creds) oidcsts.Identity {
	t.Helper()
	id, ok := w.sts.Lookup(c.AccessKeyID)
	if !ok {
		t.Fatalf("access key %s was not issued by the STS", c.AccessKeyID)
	}
	return id
}

// runSDK runs a client inside the pod and returns the Arn it printed.
func (w *world) runSDK(t *testing.T, p *harness.Pod, env []string, args ...string) string {
	t.Helper()
	out, err := runInPod(p, 60*time.Second, "", env, args...)
	if err != nil {
		t.Fatal(err)
	}
	var id struct{ Arn string }
	if err := json.Unmarshal(out, &id); err != nil {
		t.Fatalf("%v printed %q, not JSON with an Arn: %v", args, out, err)
	}
	return id.Arn
}

// podEnv is the environment of an SDK client in a pod talking to our STS.
func (w *world) podEnv(extra ...string) []string {
	return harness.PodEnv(w.home, w.agent.URL, map[string]string{"AWS_ENDPOINT_URL_STS": w.sts.URL()}, extra...)
}

// stsCallsFor counts AssumeRoleWithWebIdentity calls for a pod.
func (w *world) stsCallsFor(p *corev1.Pod) int64 { return w.sts.PodCalls(string(p.UID)) }
