package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
	"github.com/credbroker/agent/pkg/podresolve"
)

var t0 = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

const roleAnnotation = "eks.amazonaws.com/role-arn"

// fakeExchanger mints distinct, recognisable credentials per call. Its
// behaviour can be swapped with fn; calls are counted.
type fakeExchanger struct {
	clock  *clocktesting.FakeClock
	calls  atomic.Int64
	mu     sync.Mutex
	fn     func(exchange.Request) (exchange.Credentials, error)
	tokens []string // tokens received, to check the wiring
}

func (x *fakeExchanger) Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error) {
	n := x.calls.Add(1)
	x.mu.Lock()
	fn := x.fn
	x.tokens = append(x.tokens, req.Token.Reveal())
	x.mu.Unlock()
	if fn != nil {
		return fn(req)
	}
	return x.mint(req, n, time.Hour), nil
}

// mint makes credentials naming the pod's session and, like STS, the
// account of the role: tests read both back to see whose credentials an
// answer holds.
func (x *fakeExchanger) mint(req exchange.Request, n int64, life time.Duration) exchange.Credentials {
	if req.SessionName == "" {
		req.SessionName = awsexchange.SessionName(req.Namespace, req.Pod, req.PodUID)
	}
	if req.Want == exchange.KindAccessToken {
		return exchange.Credentials{Kind: exchange.KindAccessToken, TokenType: "Bearer", Expiration: x.clock.Now().Add(life),
			AccessToken: exchange.Secret(fmt.Sprintf("GCPTOKEN-%s-%s-%s-%d", req.SessionName, req.Role, strings.Join(req.Scopes, "+"), n))}
	}
	var account string
	if parts := strings.Split(req.Role, ":"); len(parts) > 4 {
		account = parts[4]
	}
	return exchange.Credentials{
		AccountID:       account,
		Kind:            exchange.KindAWS,
		AccessKeyID:     fmt.Sprintf("ASIA-%s-%d", req.SessionName, n),
		SecretAccessKey: exchange.Secret(fmt.Sprintf("SECRETKEY-%s-%d", req.SessionName, n)),
		SessionToken:    exchange.Secret(fmt.Sprintf("SESSIONTOKEN-%s-%d", req.SessionName, n)),
		Expiration:      x.clock.Now().Add(life),
	}
}

// hold makes every exchange wait until release is closed and then mint a
// credential valid for an hour, one numbered 1; entered is closed when
// the first exchange starts waiting. Tests use it to act while a fetch is
// in flight.
func (x *fakeExchanger) hold() (entered <-chan struct{}, release chan struct{}) {
	in, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	x.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		once.Do(func() { close(in) })
		<-release
		return x.mint(req, 1, time.Hour), nil
	})
	return in, release
}

func (x *fakeExchanger) setFn(fn func(exchange.Request) (exchange.Credentials, error)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.fn = fn
}

type testEnv struct {
	t         testing.TB
	clock     *clocktesting.FakeClock
	client    *fake.Clientset
	resolver  *testfake.Resolver
	exchanger *fakeExchanger
	broker    *Broker
	reg       *prometheus.Registry
	logs      *testfake.Buffer
	tokenReqs atomic.Int64
	tokenErr  atomic.Pointer[error]
	// bodies collects every response body, to check none carries a secret.
	bodiesMu sync.Mutex
	bodies   []string
	// audiences collects the audience of every TokenRequest.
	audiencesMu sync.Mutex
	audiences   []string
}

func newEnv(t testing.TB, mutate func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, clock: clocktesting.NewFakeClock(t0), client: fake.NewClientset(),
		resolver: &testfake.Resolver{},
		reg:      prometheus.NewRegistry(), logs: &testfake.Buffer{}}
	e.exchanger = &fakeExchanger{clock: e.clock}
	e.client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		n := e.tokenReqs.Add(1)
		if errp := e.tokenErr.Load(); errp != nil {
			return true, nil, *errp
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest)
		if tr.Spec.BoundObjectRef == nil || tr.Spec.BoundObjectRef.Kind != "Pod" {
			t.Errorf("TokenRequest not bound to a pod: %+v", tr.Spec.BoundObjectRef)
		}
		e.audiencesMu.Lock()
		e.audiences = append(e.audiences, tr.Spec.Audiences...)
		e.audiencesMu.Unlock()
		out := tr.DeepCopy()
		out.Status.Token = fmt.Sprintf("SATOKEN-%s-%d", tr.Spec.BoundObjectRef.UID, n)
		life := 10 * time.Minute
		if tr.Spec.ExpirationSeconds != nil {
			life = time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
		}
		out.Status.ExpirationTimestamp = metav1.NewTime(e.clock.Now().Add(life))
		return true, out, nil
	})
	cfg := Config{
		ServiceAccounts: kubetest.ServiceAccounts(e.client), Resolver: e.resolver,
		Clouds:     []Cloud{awsCloud(e.exchanger)},
		Registerer: e.reg, Clock: e.clock,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.broker = b
	// The ServiceAccount watch runs for every test; Run, where a test
	// calls it, does not start it twice.
	ctx, cancel := context.WithCancel(context.Background())
	informerDone := make(chan struct{})
	go func() { defer close(informerDone); b.accounts.run(ctx) }()
	// ShutDown stops the delaying queue's goroutine in tests that never
	// call Run (it is idempotent for those that do).
	t.Cleanup(func() { cancel(); <-informerDone; b.queue.ShutDown() })
	testfake.Eventually(t, "the ServiceAccount watch to list", b.HasSynced)
	t.Cleanup(func() { e.assertNoSecretsLeaked() })
	return e
}

// waitForRole waits until the broker's ServiceAccount watch shows the
// annotation as the test last set it.
func (e *testEnv) waitForRole(ns, name, role string) {
	e.t.Helper()
	testfake.Eventually(e.t, "the ServiceAccount watch to see "+ns+"/"+name, func() bool {
		got, err := e.broker.accounts.Identity(ns, name, 0)
		return err == nil && got == role
	})
}

// serviceAccount creates a ServiceAccount, annotated with role when role is
// not empty.
func (e *testEnv) serviceAccount(ns, name, role string) {
	e.t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if role != "" {
		sa.Annotations = map[string]string{roleAnnotation: role}
	}
	if _, err := e.client.CoreV1().ServiceAccounts(ns).Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitForRole(ns, name, role)
}

func (e *testEnv) setRole(ns, name, role string) {
	e.t.Helper()
	sa, err := e.client.CoreV1().ServiceAccounts(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	sa.Annotations = map[string]string{roleAnnotation: role}
	if _, err := e.client.CoreV1().ServiceAccounts(ns).Update(context.Background(), sa, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitForRole(ns, name, role)
}

// pod places a pod with its ServiceAccount at addr.
// newEnvWithPod is newEnv with the setup most tests start from: one pod,
// ns/p at addr, whose ServiceAccount ns/sa names roleA.
func newEnvWithPod(t testing.TB, addr string) (*testEnv, podresolve.Pod) {
	t.Helper()
	e := newEnv(t, nil)
	e.serviceAccount("ns", "sa", roleA)
	return e, e.pod(addr, "ns", "p", "sa")
}

func (e *testEnv) pod(addr, ns, name, sa string) podresolve.Pod {
	p := podresolve.Pod{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name), ServiceAccount: sa,
		IPs: []netip.Addr{netip.MustParseAddr(addr)}}
	e.resolver.Set(addr, p)
	return p
}

type response struct {
	status int
	header http.Header
	body   string
	creds  awsCredentials
	errObj map[string]string
}

// awsCredentials is what the AWS surface (pkg/api/awscreds) would serve,
// decoded: the tests read which pod and role an answer was for.
type awsCredentials struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
	AccountID       string `json:"AccountId,omitempty"`
}

var awsRequest = Request{Cloud: exchange.AWS, Want: exchange.KindAWS}

// get asks for the AWS credentials of the pod at addr as a surface does,
// and turns the answer into what the AWS surface would send: the status
// of the failure's class, Retry-After, and the code and message.
func (e *testEnv) get(addr string) response {
	e.t.Helper()
	ctx := context.Background()
	a := netip.MustParseAddr(addr)
	ans, err := e.broker.Credentials(ctx, a, awsRequest)
	r := response{header: http.Header{}}
	if err != nil {
		f := Classify(err)
		e.broker.LogFailure(ctx, a, ans.Pod, f, err)
		r.status = map[Class]int{Unavailable: 503, Throttled: 429, Refused: 403, Invalid: 400}[f.Class]
		if f.RetryAfter > 0 {
			r.header.Set("Retry-After", fmt.Sprint(max(int(f.RetryAfter/time.Second), 1)))
		}
		r.errObj = map[string]string{"code": f.Code, "Code": f.Code, "message": f.Message, "Message": f.Message}
		body, _ := json.Marshal(r.errObj)
		r.body = string(body)
	} else {
		c := ans.Credentials
		r.status = http.StatusOK
		r.creds = awsCredentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey.Reveal(), Token: c.SessionToken.Reveal(),
			Expiration: c.Expiration.UTC().Truncate(time.Second).Format(time.RFC3339), AccountID: c.AccountID}
		body, _ := json.Marshal(r.creds)
		r.body = string(body)
	}
	e.bodiesMu.Lock()
	e.bodies = append(e.bodies, r.body)
	e.bodiesMu.Unlock()
	return r
}

func (e *testEnv) counter(name string, labels map[string]string) float64 {
	e.t.Helper()
	return testfake.Metric(e.t, e.reg, name, labels)
}

// assertNoSecretsLeaked checks every log line, response body of a failure
// and metric for anything that looks like a token or a secret the fakes
// minted. Successful bodies are the one place secrets belong.
func (e *testEnv) assertNoSecretsLeaked() {
	e.t.Helper()
	var haystack strings.Builder
	haystack.WriteString(e.logs.String())
	e.bodiesMu.Lock()
	defer e.bodiesMu.Unlock()
	for _, b := range e.bodies {
		if !strings.Contains(b, "SecretAccessKey") {
			haystack.WriteString(b)
		}
	}
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		haystack.WriteString(mf.String())
	}
	for _, marker := range []string{"SATOKEN-", "SECRETKEY-", "SESSIONTOKEN-", "GCPTOKEN-"} {
		if strings.Contains(haystack.String(), marker) {
			e.t.Errorf("a secret (%s...) leaked into logs, an error body or metrics", marker)
		}
	}
}

// cached reports whether the pod's AWS credentials are cached.
func (e *testEnv) cached(uid types.UID) bool {
	return e.broker.cache.Contains(entryKey{uid: uid, req: awsRequest})
}
