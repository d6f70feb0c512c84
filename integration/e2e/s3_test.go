//go:build integration

package e2e

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
)

// The AWS CLI and boto3 in a pod use the agent's credentials for signed S3
// and STS calls that moto verifies: the credentials are the real ones STS
// issued for the pod's role, not just well-formed JSON. A second agent (on
// its own node and port) uses moto as its STS, since only moto can check the
// signatures of the credentials it issued.
func (w *world) testS3WithMoto(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := harness.StartMoto(ctx, harness.MotoConfig{Dir: w.dir, Host: netns.ServiceAddr4.String()})
	if err != nil {
		t.Fatalf("StartMoto: %v", err)
	}
	defer m.Stop()
	role, err := m.CreateRole(ctx, "s3-reader")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CreateBucket(ctx, "credbroker-e2e"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.cp.CreateServiceAccount(ctx, "data", "loader", role); err != nil {
		t.Fatal(err)
	}

	a2, err := harness.StartAgent(ctx, harness.AgentConfig{
		Binary:      w.agent.Config.Binary,
		Dir:         w.dir,
		Name:        "agent-moto",
		Kubeconfig:  w.kc,
		NodeName:    "node-s3",
		Listen:      net.JoinHostPort(netns.ServiceAddr4.String(), "0"),
		STSEndpoint: m.URL,
	})
	if err != nil {
		t.Fatalf("starting the second agent: %v", err)
	}
	defer a2.Stop()
	ps, err := harness.NewPods(ctx, w.cp, "node-s3", "cbs3")
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close(context.Background())
	p, err := ps.Start(ctx, harness.PodSpec{Namespace: "data", Name: "loader-1", ServiceAccount: "loader", IP: w.ip()})
	if err != nil {
		t.Fatal(err)
	}

	// The agent's one AssumeRoleWithWebIdentity is unsigned by design; let it
	// happen, then make moto check every signature from here on.
	deadline := time.Now().Add(20 * time.Second)
	var served creds
	for {
		r := w.fetchURL(t, p, a2.URL)
		if r.status == http.StatusOK {
			served = r.creds(t)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second agent never served the pod: %d %s\n%s", r.status, r.body, a2.LogTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := m.EnforceAuth(ctx, 0); err != nil {
		t.Fatal(err)
	}

	env := harness.PodEnv(w.home, a2.URL, map[string]string{"AWS_ENDPOINT_URL": m.URL})
	run := func(args ...string) string {
		t.Helper()
		cmd := p.Exec(ctx, env, args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v in the pod: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run(w.tools.aws, "s3", "ls"); !strings.Contains(out, "credbroker-e2e") {
		t.Errorf("aws s3 ls printed %q, want the bucket credbroker-e2e", out)
	}
	if out := run(w.python, "-c", "import boto3; print([b['Name'] for b in boto3.client('s3').list_buckets()['Buckets']])"); !strings.Contains(out, "credbroker-e2e") {
		t.Errorf("boto3 list_buckets printed %q", out)
	}
	want := "arn:aws:sts::" + account + ":assumed-role/s3-reader/data.loader-1."
	if arn := w.runSDK(t, p, env, w.tools.aws, "sts", "get-caller-identity", "--output", "json"); !strings.HasPrefix(arn, want) {
		t.Errorf("caller identity %q, want %s…", arn, want)
	}

	// Control: moto really checks signatures now. The same key with a wrong
	// secret is refused.
	bad := exec.CommandContext(ctx, w.tools.aws, "s3", "ls")
	bad.Env = harness.PodEnv(w.home, "", map[string]string{"AWS_ENDPOINT_URL": m.URL},
		"AWS_ACCESS_KEY_ID="+served.AccessKeyID, "AWS_SECRET_ACCESS_KEY=wrong"+served.SecretAccessKey[5:],
		"AWS_SESSION_TOKEN="+served.Token, "AWS_CONTAINER_CREDENTIALS_FULL_URI=")
	if out, err := bad.CombinedOutput(); err == nil {
		t.Errorf("S3 call with a wrong secret succeeded: moto is not checking signatures\n%s", out)
	}
}
