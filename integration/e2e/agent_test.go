//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
)

func newGet(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}

func readAll(r io.Reader) ([]byte, error) { return io.ReadAll(io.LimitReader(r, 1<<20)) }

// TestAgent is the suite: one control plane, one STS, one agent, scenarios
// in order. The S3 scenario runs a second agent against moto.
func TestAgent(t *testing.T) {
	w := setupWorld(t)
	// Each scenario stops the suite on failure only for itself.
	t.Run("SDKClients", w.testSDKClients)
	t.Run("TwoPodsTwoRoles", w.testTwoPodsTwoRoles)
	t.Run("Refusals", w.testRefusals)
	t.Run("RefusalsRecordEvents", w.testRefusalEvents)
	t.Run("ServiceToService", w.testServiceToService)
	t.Run("IPReusedByNewPod", w.testIPReused)
	t.Run("ConcurrentFirstRequests", w.testConcurrentFirst)
	t.Run("DualStackPod", w.testDualStack)
	t.Run("UpstreamErrors", w.testUpstreamErrors)
	t.Run("S3WithMoto", w.testS3WithMoto)
	t.Run("S3WithMinIO", w.testS3WithMinIO)
	t.Run("STSDown", w.testSTSDown)
	t.Run("APIServerRestart", w.testAPIServerRestart)
	t.Run("NoSecretInLogsOrMetrics", w.testNoSecretLeaked)
}

// After every scenario above (refusals, upstream failures, outages), the
// agent's whole debug-level log and its metrics hold none of the tokens it
// exchanged nor any secret key or session token it was issued.
func (w *world) testNoSecretLeaked(t *testing.T) {
	secrets := w.sts.Secrets()
	if len(secrets) < 10 {
		t.Fatalf("only %d secrets recorded by the STS; the suite did not exercise the agent", len(secrets))
	}
	logs, err := os.ReadFile(w.agent.Process.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := w.agent.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) == 0 {
		t.Fatal("the agent wrote no log at all")
	}
	for i, s := range secrets {
		// A JWT's header is the same for every token; look for its signature
		// part and for the whole of every other secret.
		needle := s
		if parts := strings.Split(s, "."); len(parts) == 3 {
			needle = parts[2]
		}
		if strings.Contains(string(logs), needle) || strings.Contains(metrics, needle) {
			t.Errorf("secret #%d (of %d) appears in the agent's log or metrics", i, len(secrets))
		}
	}
}

// Every SDK, with nothing but AWS_CONTAINER_CREDENTIALS_FULL_URI, gets
// credentials from the agent and uses them; STS says it is the pod's role.
func (w *world) testSDKClients(t *testing.T) {
	w.serviceAccount(t, "shop", "checkout", "checkout")
	p := w.pod(t, "shop", "checkout-7d9f", "checkout")
	want := assumedPrefix("checkout", "shop", "checkout-7d9f")
	js := filepath.Join(w.root, "integration/sdk/js/caller-identity.mjs")

	for _, c := range []struct {
		name string
		args []string
	}{
		{"aws-cli-v1", []string{w.tools.aws, "sts", "get-caller-identity", "--output", "json"}},
		{"boto3", []string{w.python, "-c", "import boto3, json; r = boto3.client('sts').get_caller_identity(); print(json.dumps({'Arn': r['Arn']}))"}},
		{"aws-sdk-go-v2", []string{w.tools.callerid}},
		{"js-v3-default-chain", []string{w.tools.node, js}},
		{"js-v3-fromHttp", []string{w.tools.node, js, "--provider=http"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := w.sts.Counts().GetCallerIdentity
			arn := w.runSDK(t, p, w.podEnv(), c.args...)
			if !strings.HasPrefix(arn, want) {
				t.Errorf("caller identity %q, want the pod's role session %s…", arn, want)
			}
			if got := w.sts.Counts().GetCallerIdentity - before; got != 1 {
				t.Errorf("STS saw %d GetCallerIdentity calls, want 1", got)
			}
		})
	}
	// All five clients were served from one exchange.
	if got := w.stsCallsFor(p.Pod); got != 1 {
		t.Errorf("AssumeRoleWithWebIdentity calls for the pod = %d, want 1", got)
	}
}

// Two pods on one node with different ServiceAccounts each get only their
// own role, however often they ask.
func (w *world) testTwoPodsTwoRoles(t *testing.T) {
	w.serviceAccount(t, "team-a", "reader", "reader")
	w.serviceAccount(t, "team-b", "writer", "writer")
	a := w.pod(t, "team-a", "reader-1", "reader")
	b := w.pod(t, "team-b", "writer-1", "writer")
	for i := 0; i < 5; i++ {
		for _, c := range []struct {
			p    *harness.Pod
			role string
		}{{a, "reader"}, {b, "writer"}} {
			r := w.fetch(t, c.p)
			if r.status != http.StatusOK {
				t.Fatalf("pod %s: %d %s", c.p.Pod.Name, r.status, r.body)
			}
			id := w.identity(t, r.creds(t))
			if id.RoleArn != roleARN(c.role) || id.PodUID != string(c.p.Pod.UID) {
				t.Fatalf("pod %s got role %s of pod %s, want %s of itself", c.p.Pod.Name, id.RoleArn, id.PodUID, roleARN(c.role))
			}
		}
	}
	// And the CLI in pod b confirms it.
	if arn := w.runSDK(t, b, w.podEnv(), w.tools.aws, "sts", "get-caller-identity", "--output", "json"); !strings.HasPrefix(arn, assumedPrefix("writer", "team-b", "writer-1")) {
		t.Errorf("CLI in pod b: %s", arn)
	}
}

// A refused pod gets a Warning Event saying why, once however often it
// asks: client-go's aggregation counts repeats on one Event, and its spam
// filter stops writing after a burst.
func (w *world) testRefusalEvents(t *testing.T) {
	w.serviceAccount(t, "noisy", "default", "")
	p := w.pod(t, "noisy", "app-1", "default")
	const requests = 60
	for range requests {
		if r := w.fetch(t, p); r.status != http.StatusForbidden {
			t.Fatalf("status %d %s, want 403", r.status, r.body)
		}
	}
	type event struct {
		Reason, Type, Message string
		Count                 int
		InvolvedObject        struct{ Kind, Name, UID string }
		Source                struct{ Component, Host string }
	}
	var events []event
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := w.cp.Kubectl(context.Background(), "get", "events", "-n", p.Pod.Namespace,
			"--field-selector", "involvedObject.name="+p.Pod.Name, "-o", "json")
		if err != nil {
			t.Fatalf("kubectl get events: %v: %s", err, out)
		}
		var list struct{ Items []event }
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatal(err)
		}
		events = list.Items
		// Writes are asynchronous and aggregated: wait until the count
		// stops at the spam filter's burst or reaches the requests.
		if len(events) == 1 && (events[0].Count >= 25 || events[0].Count == requests) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(events) != 1 {
		t.Fatalf("%d Events on the pod, want one: %+v", len(events), events)
	}
	e := events[0]
	if e.Reason != "DefaultServiceAccount" || e.Type != "Warning" || e.InvolvedObject.Kind != "Pod" || e.InvolvedObject.UID != string(p.Pod.UID) ||
		!strings.Contains(e.Message, "default ServiceAccount") || e.Source.Component != "credbroker-agent" {
		t.Errorf("event %+v, want a Warning DefaultServiceAccount on the pod from credbroker-agent", e)
	}
	if e.Count < 1 || e.Count > 26 {
		t.Errorf("event count %d for %d refusals, want the spam filter's burst (25) at most", e.Count, requests)
	}
}

// Refused callers get 403 with a JSON message saying why.
func (w *world) testRefusals(t *testing.T) {
	// refused makes ServiceAccount ns/sa (annotated with role unless
	// empty) and its pod app-1, and returns the pod and the message of the
	// 403 its request must get.
	refused := func(t *testing.T, ns, sa, role string) (*harness.Pod, apiError) {
		t.Helper()
		w.serviceAccount(t, ns, sa, role)
		p := w.pod(t, ns, "app-1", sa)
		r := w.fetch(t, p)
		if r.status != http.StatusForbidden {
			t.Fatalf("status %d %s, want 403", r.status, r.body)
		}
		return p, r.apiError(t)
	}
	t.Run("DefaultServiceAccount", func(t *testing.T) {
		// Even annotated, "default" is refused unless the operator opts in.
		p, e := refused(t, "lazy", "default", "lazy-default")
		if !strings.Contains(strings.ToLower(e.Message), "default") {
			t.Errorf("message %q does not mention the default ServiceAccount", e.Message)
		}
		if got := w.stsCallsFor(p.Pod); got != 0 {
			t.Errorf("STS calls for a refused pod = %d", got)
		}
	})
	t.Run("NoRoleAnnotation", func(t *testing.T) {
		_, e := refused(t, "plain", "no-role-sa", "")
		if !strings.Contains(e.Message, harness.RoleAnnotation) || !strings.Contains(e.Message, "no-role-sa") {
			t.Errorf("message %q does not name the annotation %s and the ServiceAccount no-role-sa", e.Message, harness.RoleAnnotation)
		}
	})
	t.Run("HostNetworkCaller", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		code, body, err := harness.HostGet(ctx, w.agent.URL)
		if err != nil {
			t.Fatal(err)
		}
		r := response{status: code, body: body}
		if code != http.StatusForbidden {
			t.Fatalf("status %d %s, want 403", code, body)
		}
		if e := r.apiError(t); !strings.Contains(strings.ToLower(e.Message), "host") {
			t.Errorf("message %q does not say host network", e.Message)
		}
	})
}

// A pod deleted and a new one given its IP: the new pod gets its own role
// and never the old one's, not even in the gap between the two.
func (w *world) testIPReused(t *testing.T) {
	ctx := context.Background()
	w.serviceAccount(t, "churn", "old-sa", "old-role")
	w.serviceAccount(t, "churn", "new-sa", "new-role")
	old := w.pod(t, "churn", "job-1", "old-sa")
	ip := old.NS.IP()
	if id := w.identity(t, w.fetchUntil200(t, old, 10*time.Second, nil)); id.RoleArn != roleARN("old-role") {
		t.Fatalf("old pod got %s", id.RoleArn)
	}
	if err := old.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	// The address comes back before any pod owns it again.
	ns, err := netns.Create(ctx, netns.Spec{Name: nsPrefix + "-reuse", IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	orphan := &harness.Pod{Pod: old.Pod, NS: ns}
	neverOld := func(r response) {
		if r.status == http.StatusOK {
			if id := w.identity(t, r.creds(t)); id.RoleArn != roleARN("new-role") || id.PodUID == string(old.Pod.UID) {
				t.Fatalf("address %s was served role %s of pod %s after the old pod was deleted", ip, id.RoleArn, id.PodUID)
			}
		}
	}
	r := w.fetch(t, orphan)
	neverOld(r)
	if r.status == http.StatusOK {
		t.Fatalf("address of a deleted pod served before a new pod exists")
	}
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("address without a pod: status %d %s, want 503 (retryable)", r.status, r.body)
	}

	newPod, err := w.cp.CreatePod(ctx, harness.PodSpec{Namespace: "churn", Name: "job-2", ServiceAccount: "new-sa", NodeName: node, IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	defer w.cp.DeletePod(context.Background(), "churn", "job-2")
	c := w.fetchUntil200(t, orphan, 10*time.Second, neverOld)
	if id := w.identity(t, c); id.PodUID != string(newPod.UID) {
		t.Errorf("served credentials of pod %s, want the new pod %s", id.PodUID, newPod.UID)
	}
}

// 50 concurrent first requests from one pod share one TokenRequest and one
// STS call.
func (w *world) testConcurrentFirst(t *testing.T) {
	w.serviceAccount(t, "burst", "api", "api")
	// A slow STS keeps the first fetch in flight while all 50 arrive.
	if err := w.sts.SetFault(oidcsts.Fault{Latency: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	defer w.sts.SetFault(oidcsts.Fault{})
	before := w.sts.Counts().AssumeRole
	p := w.pod(t, "burst", "api-1", "api")

	const n = 50
	results := concurrently(n, func() response { return w.fetch(t, p) })
	keys := map[string]int{}
	for _, r := range results {
		if r.status != http.StatusOK {
			t.Errorf("status %d %s", r.status, r.body)
			continue
		}
		keys[r.creds(t).AccessKeyID]++
	}
	if len(keys) != 1 {
		t.Errorf("%d different access keys served, want 1: %v", len(keys), keys)
	}
	if got := w.sts.Counts().AssumeRole - before; got != 1 {
		t.Errorf("AssumeRoleWithWebIdentity calls = %d, want 1", got)
	}
	if got := w.stsCallsFor(p.Pod); got != 1 {
		t.Errorf("AssumeRoleWithWebIdentity calls for the pod = %d, want 1", got)
	}
	if got := w.tokenRequestsFor(t, p.Pod); got != 1 {
		t.Errorf("TokenRequests bound to the pod = %d, want 1", got)
	}
}

// STS down: a cached pod keeps its credentials, a new pod gets a retryable
// 503, and once STS is back the new pod is served.
func (w *world) testSTSDown(t *testing.T) {
	w.serviceAccount(t, "outage", "svc", "svc")
	cached := w.pod(t, "outage", "cached-1", "svc")
	first := w.fetchUntil200(t, cached, 10*time.Second, nil)

	if err := w.sts.SetFault(oidcsts.Fault{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			w.sts.SetFault(oidcsts.Fault{})
		}
	}()
	for i := 0; i < 3; i++ {
		r := w.fetch(t, cached)
		if r.status != http.StatusOK {
			t.Fatalf("cached pod during STS outage: %d %s", r.status, r.body)
		}
		if got := r.creds(t).AccessKeyID; got != first.AccessKeyID {
			t.Errorf("cached pod got access key %s during the outage, want its cached %s", got, first.AccessKeyID)
		}
	}
	fresh := w.pod(t, "outage", "fresh-1", "svc")
	r := w.fetch(t, fresh)
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("new pod during STS outage: %d %s, want 503", r.status, r.body)
	}
	r.apiError(t)
	if r.header["Retry-After"] == nil {
		t.Errorf("503 without Retry-After")
	}

	if err := w.sts.SetFault(oidcsts.Fault{}); err != nil {
		t.Fatal(err)
	}
	restored = true
	c := w.fetchUntil200(t, fresh, 60*time.Second, nil)
	if id := w.identity(t, c); id.PodUID != string(fresh.Pod.UID) || id.RoleArn != roleARN("svc") {
		t.Errorf("new pod after recovery got %+v", id)
	}
}

// kube-apiserver restarted: cached pods keep being served while it is down,
// and the informer recovers, so a pod created afterwards is served.
func (w *world) testAPIServerRestart(t *testing.T) {
	ctx := context.Background()
	w.serviceAccount(t, "restart", "svc", "restart-role")
	before := w.pod(t, "restart", "before-1", "svc")
	first := w.fetchUntil200(t, before, 10*time.Second, nil)

	t0 := time.Now()
	w.cp.StopAPIServer()
	t.Logf("kube-apiserver stopped in %v", time.Since(t0).Round(time.Millisecond))
	started := false
	defer func() {
		if !started {
			_ = w.cp.StartAPIServer(context.Background())
		}
	}()
	for i := 0; i < 3; i++ {
		r := w.fetch(t, before)
		if r.status != http.StatusOK || r.creds(t).AccessKeyID != first.AccessKeyID {
			t.Fatalf("cached pod while the API server is down: %d %s", r.status, r.body)
		}
	}
	t0 = time.Now()
	if err := w.cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("StartAPIServer: %v", err)
	}
	started = true
	t.Logf("kube-apiserver ready again in %v", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	after := w.pod(t, "restart", "after-1", "svc")
	c := w.fetchUntil200(t, after, 60*time.Second, nil)
	t.Logf("pod created after the restart served in %v", time.Since(t0).Round(time.Millisecond))
	if id := w.identity(t, c); id.PodUID != string(after.Pod.UID) {
		t.Errorf("pod created after the restart got credentials of %s", id.PodUID)
	}
	if r := w.fetch(t, before); r.status != http.StatusOK {
		t.Errorf("cached pod after the restart: %d %s", r.status, r.body)
	}
}

// A dual-stack pod is the same pod on both addresses: same role, same cached
// credentials, and the CLI works over IPv6 too.
func (w *world) testDualStack(t *testing.T) {
	w.serviceAccount(t, "dual", "svc", "dual")
	v4 := w.ip()
	v6 := netip.MustParseAddr("fd00:244:1::" + strconv.Itoa(int(v4.As4()[3])))
	p, err := w.pods.Start(context.Background(), harness.PodSpec{Namespace: "dual", Name: "ds-1", ServiceAccount: "svc", IP: v4, IPv6: v6})
	if err != nil {
		t.Fatal(err)
	}
	c4 := w.fetchUntil200(t, p, 10*time.Second, nil)
	r6 := w.fetchURL(t, p, w.agentURL6)
	if r6.status != http.StatusOK {
		t.Fatalf("over IPv6: %d %s", r6.status, r6.body)
	}
	c6 := r6.creds(t)
	if c6.AccessKeyID != c4.AccessKeyID {
		t.Errorf("IPv6 got access key %s, IPv4 %s: one pod, one cache entry expected", c6.AccessKeyID, c4.AccessKeyID)
	}
	if id := w.identity(t, c6); id.PodUID != string(p.Pod.UID) {
		t.Errorf("IPv6 caller got credentials of pod %s", id.PodUID)
	}
	env := harness.PodEnv(w.home, w.agentURL6, map[string]string{"AWS_ENDPOINT_URL_STS": w.sts.URL()})
	if arn := w.runSDK(t, p, env, w.tools.aws, "sts", "get-caller-identity", "--output", "json"); !strings.HasPrefix(arn, assumedPrefix("dual", "dual", "ds-1")) {
		t.Errorf("CLI over IPv6: %s", arn)
	}
}

// STS errors reach the pod as the caller contract says: throttling as 429,
// a refusal as 403, both as JSON. Once STS stops throttling, the pod is
// served (a denial is remembered for a while by design, so the suite does
// not wait for that one).
func (w *world) testUpstreamErrors(t *testing.T) {
	w.serviceAccount(t, "errs", "svc", "errs")
	for _, c := range []struct {
		fault   oidcsts.FaultCode
		want    int
		recover bool
	}{
		{oidcsts.FaultThrottling, http.StatusTooManyRequests, true},
		// A fresh denial is provisional (IAM is eventually consistent):
		// retryable for deniedRetryWindow, final (403) after it; the
		// broker's unit tests step through the window with a fake clock.
		{oidcsts.FaultAccessDenied, http.StatusServiceUnavailable, false},
	} {
		t.Run(string(c.fault), func(t *testing.T) {
			if err := w.sts.SetFault(oidcsts.Fault{Code: c.fault}); err != nil {
				t.Fatal(err)
			}
			defer w.sts.SetFault(oidcsts.Fault{})
			p := w.pod(t, "errs", "err-"+strings.ToLower(string(c.fault)), "svc")
			r := w.fetch(t, p)
			t.Logf("first answer: %d %s", r.status, r.body)
			if r.status != c.want {
				t.Fatalf("status %d %s, want %d", r.status, r.body, c.want)
			}
			r.apiError(t)
			if !c.recover {
				return
			}
			if err := w.sts.SetFault(oidcsts.Fault{}); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			creds := w.fetchUntil200(t, p, 60*time.Second, nil)
			t.Logf("served %v after STS recovered", time.Since(t0).Round(time.Millisecond))
			if id := w.identity(t, creds); id.PodUID != string(p.Pod.UID) {
				t.Errorf("got credentials of pod %s", id.PodUID)
			}
		})
	}
}
