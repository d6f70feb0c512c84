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
	"github.com/credbroker/agent/integration/testenv"
)

// Issue 18, items 10 and 11, with a real S3-compatible STS: MinIO verifies
// the pod-bound token against the cluster's issuer and issues credentials
// for its own role form, arn:minio:iam:::role/ID, which the agent accepts
// with --sts-extra-arn-partitions=minio; the AWS CLI and boto3 in the pod
// use them on MinIO's S3. An agent whose --audience is not MinIO's client
// ID is refused by MinIO ("`azp` must match configured OpenID Client ID"),
// and the pod is told AudienceRefused naming --audience, not the
// identity annotation.
func (w *world) testS3WithMinIO(t *testing.T) {
	const clientID = "credbroker-minio"
	if _, err := harness.MinIOBinary(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := w.cp.StartMinIO(ctx, harness.MinIOConfig{Dir: w.dir, Host: netns.ServiceAddr4.String(), ClientID: clientID})
	if err != nil {
		t.Fatalf("StartMinIO: %v", err)
	}
	defer m.Stop()
	root := harness.PodEnv(w.home, "", map[string]string{"AWS_ENDPOINT_URL": m.URL},
		"AWS_ACCESS_KEY_ID="+m.RootUser, "AWS_SECRET_ACCESS_KEY="+m.RootPassword, "AWS_CONTAINER_CREDENTIALS_FULL_URI=")
	mb := exec.CommandContext(ctx, w.tools.aws, "s3", "mb", "s3://credbroker-minio")
	mb.Env = root
	if out, err := mb.CombinedOutput(); err != nil {
		t.Fatalf("creating the bucket as MinIO's root: %v\n%s", err, out)
	}
	if _, err := w.cp.CreateServiceAccount(ctx, "lake", "reader", m.RoleARN); err != nil {
		t.Fatal(err)
	}

	startAgent := func(name, node string, extra ...string) *harness.Agent {
		t.Helper()
		a, err := harness.StartAgent(ctx, harness.AgentConfig{
			Binary: w.agent.Config.Binary, Dir: w.dir, Name: name, Kubeconfig: w.kc, NodeName: node,
			Listen:      net.JoinHostPort(netns.ServiceAddr4.String(), "0"),
			STSEndpoint: m.URL, ExtraArgs: append([]string{"--sts-extra-arn-partitions=minio"}, extra...),
		})
		if err != nil {
			t.Fatalf("starting %s: %v", name, err)
		}
		return a
	}
	startPod := func(node, prefix, name string) *harness.Pod {
		t.Helper()
		ps, err := harness.NewPods(ctx, w.cp, node, prefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ps.Close(context.Background()) })
		p, err := ps.Start(ctx, harness.PodSpec{Namespace: "lake", Name: name, ServiceAccount: "reader", IP: w.ip()})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("Served", func(t *testing.T) {
		a := startAgent("agent-minio", "node-minio", "--audience="+clientID)
		defer a.Stop()
		p := startPod("node-minio", "cbmn", "reader-1")
		deadline := time.Now().Add(20 * time.Second)
		for {
			r := w.fetchURL(t, p, a.URL)
			if r.status == http.StatusOK {
				if c := r.creds(t); c.AccountID != "" {
					t.Errorf("AccountId %q for a MinIO role, want none", c.AccountID)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a MinIO role was never served: %d %s\n%s\n%s", r.status, r.body, a.LogTail(20), m.Process.LogTail(20))
			}
			time.Sleep(200 * time.Millisecond)
		}
		env := harness.PodEnv(w.home, a.URL, map[string]string{"AWS_ENDPOINT_URL": m.URL})
		run := func(args ...string) string {
			t.Helper()
			out, err := p.Exec(ctx, env, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v in the pod: %v\n%s", args, err, out)
			}
			return string(out)
		}
		if out := run(w.tools.aws, "s3", "ls"); !strings.Contains(out, "credbroker-minio") {
			t.Errorf("aws s3 ls printed %q, want the bucket credbroker-minio", out)
		}
		run(w.tools.aws, "s3api", "put-object", "--bucket", "credbroker-minio", "--key", "from-the-pod", "--body", "/etc/hostname")
		if out := run(w.python, "-c", "import boto3; print([o['Key'] for o in boto3.client('s3').list_objects_v2(Bucket='credbroker-minio')['Contents']])"); !strings.Contains(out, "from-the-pod") {
			t.Errorf("boto3 list_objects_v2 printed %q, want the object the AWS CLI wrote", out)
		}
		// Control: MinIO checks signatures, so the credentials are MinIO's
		// own and not merely well-formed.
		bad := exec.CommandContext(ctx, w.tools.aws, "s3", "ls")
		bad.Env = harness.PodEnv(w.home, "", map[string]string{"AWS_ENDPOINT_URL": m.URL},
			"AWS_ACCESS_KEY_ID="+m.RootUser, "AWS_SECRET_ACCESS_KEY=wrong-"+m.RootPassword, "AWS_CONTAINER_CREDENTIALS_FULL_URI=")
		if out, err := bad.CombinedOutput(); err == nil {
			t.Errorf("S3 call with a wrong secret succeeded: MinIO is not checking signatures\n%s", out)
		}
	})

	t.Run("WrongAudienceNamesTheAudience", func(t *testing.T) {
		a := startAgent("agent-minio-aud", "node-minio-aud") // --audience stays sts.amazonaws.com
		defer a.Stop()
		p := startPod("node-minio-aud", "cbma", "reader-2")
		var r response
		deadline := time.Now().Add(20 * time.Second)
		for {
			r = w.fetchURL(t, p, a.URL)
			if r.status != http.StatusServiceUnavailable || strings.Contains(string(r.body), "AudienceRefused") || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		e := r.apiError(t)
		t.Logf("MinIO refusing the audience: %d %s: %s", r.status, e.Code, e.Message)
		if r.status != http.StatusServiceUnavailable || e.Code != "AudienceRefused" ||
			!strings.Contains(e.Message, "--audience") || !strings.Contains(e.Message, "sts.amazonaws.com") ||
			strings.Contains(e.Message, "check the identity annotation") {
			t.Errorf("%d %s %q: want a provisional 503 AudienceRefused naming sts.amazonaws.com and --audience", r.status, e.Code, e.Message)
		}
	})
}
