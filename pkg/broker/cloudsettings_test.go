package broker

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
)

// Defect (issue 18, item 8): one denied-retry window of 2 minutes for every
// cloud, shorter than the 7 minutes Google documents for IAM propagation:
// a freshly granted GCP workload got a final 403. Each cloud has its own
// window; this walks both boundaries with the fake clock: just inside a
// window the denial is a retryable 503, just after it is final.
func TestDeniedRetryWindowIsPerCloud(t *testing.T) {
	const gcpWindow = 10 * time.Minute
	e := newTwoCloudEnv(t, func(c *Config) { c.Clouds[1].DeniedRetryWindow = gcpWindow })
	e.annotated("ns", "sa", map[string]string{gcpAnnotation: emailA, "eks.amazonaws.com/role-arn": roleA})
	testfake.Eventually(t, "the watch to see the role", func() bool { id, err := e.broker.accounts.Identity("ns", "sa", 0); return err == nil && id == roleA })
	e.pod("10.0.9.1", "ns", "p", "sa")
	e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Denied, Code: "PERMISSION_DENIED", Err: errors.New("binding not yet seen")}
	})
	ask := func(cloud exchange.Cloud) Failure {
		t.Helper()
		req := gcpDefault
		if cloud == exchange.AWS {
			req = awsRequest
		}
		_, f, err := e.gcp("10.0.9.1", req)
		if err == nil {
			t.Fatalf("%s: served although denied", cloud)
		}
		return f
	}
	retryable := func(f Failure) bool { return f.Class == Unavailable && f.RetryAfter > 0 }
	final := func(f Failure) bool { return f.Class == Refused && f.Code == CodeUpstreamDenied }

	for _, c := range []exchange.Cloud{exchange.AWS, exchange.GCP} {
		if f := ask(c); !retryable(f) {
			t.Fatalf("%s first denial: %+v, want retryable", c, f)
		}
	}
	e.clock.Step(deniedRetryWindow - time.Second)
	if r := e.get("10.0.9.1"); r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("AWS just inside its window: %d %s, want a retryable 503", r.status, r.body)
	}
	if f := ask(exchange.GCP); !retryable(f) {
		t.Fatalf("GCP just inside the default window: %+v, want retryable", f)
	}
	e.clock.Step(time.Second + time.Millisecond)
	// As the AWS surface answers it: 403, no longer 503.
	if r := e.get("10.0.9.1"); r.status != http.StatusForbidden || r.errObj["code"] != CodeUpstreamDenied {
		t.Fatalf("AWS just after its window: %d %s, want a final 403", r.status, r.body)
	}
	if f := ask(exchange.GCP); !retryable(f) {
		t.Fatalf("GCP past the default window but inside its own: %+v, want retryable", f)
	}
	e.clock.Step(gcpWindow - deniedRetryWindow - 2*time.Millisecond)
	if f := ask(exchange.GCP); !retryable(f) {
		t.Fatalf("GCP just inside its window: %+v, want retryable", f)
	}
	e.clock.Step(2 * time.Millisecond)
	if f := ask(exchange.GCP); !final(f) {
		t.Fatalf("GCP just after its window: %+v, want final", f)
	}
	// Backoff, not one fetch per request: 2 s doubling to 30 s over 10
	// minutes is about 25 fetches at most for both clouds.
	if n := e.exchanger.calls.Load(); n > 30 {
		t.Errorf("%d exchanges, want backoff", n)
	}
}

// Defect (issue 18, item 6): one --session-duration was every cloud's
// lifetime, and pod tokens' too. Each cloud now asks for its own.
func TestLifetimeIsPerCloud(t *testing.T) {
	e := newTwoCloudEnv(t, func(c *Config) {
		c.Clouds[0].Lifetime = 3 * time.Hour // AWS's, by --session-duration
		c.Clouds[1].Lifetime = time.Hour     // GCP's, by --gcp-token-lifetime
		c.Clouds = append(c.Clouds, podTokenCloud)
	})
	e.annotated("ns", "sa", map[string]string{gcpAnnotation: emailA, "eks.amazonaws.com/role-arn": roleA,
		audienceAnnotation: "https://svc.example.com/orders"})
	testfake.Eventually(t, "the watch to see the role", func() bool { id, err := e.broker.accounts.Identity("ns", "sa", 0); return err == nil && id == roleA })
	e.pod("10.0.9.2", "ns", "p", "sa")
	var mu sync.Mutex
	asked := map[exchange.Kind]time.Duration{}
	e.exchanger.setFn(func(req exchange.Request) (exchange.Credentials, error) {
		mu.Lock()
		asked[req.Want] = req.Duration
		mu.Unlock()
		return e.exchanger.mint(req, 1, max(req.Duration, time.Hour)), nil
	})
	for _, req := range []Request{awsRequest, gcpDefault, {Cloud: "kubernetes", Want: exchange.KindIDToken, Scope: "https://svc.example.com/orders"}} {
		if _, _, err := e.gcp("10.0.9.2", req); err != nil {
			t.Fatalf("%s: %v", req.Cloud, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if asked[exchange.KindAWS] != 3*time.Hour || asked[exchange.KindAccessToken] != time.Hour {
		t.Errorf("lifetimes asked: AWS %s, GCP %s; want 3h and 1h", asked[exchange.KindAWS], asked[exchange.KindAccessToken])
	}
	a, _, err := e.gcp("10.0.9.2", Request{Cloud: "kubernetes", Want: exchange.KindIDToken, Scope: "https://svc.example.com/orders"})
	if err != nil || !a.Credentials.Expiration.Equal(t0.Add(time.Hour)) {
		t.Errorf("pod token expiring %v (%v), want its own hour, not the 3h session duration", a.Credentials.Expiration, err)
	}
}

// A lifetime a cloud cannot refresh within is refused at start.
func TestCloudLifetimeBelowTheFloorIsRefused(t *testing.T) {
	cfg := Config{ServiceAccounts: kubetest.ServiceAccounts(fake.NewClientset()), Resolver: &testfake.Resolver{}, Clouds: []Cloud{awsCloud(&fakeExchanger{})}}
	cfg.Clouds[0].Lifetime = 20 * time.Minute
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "lifetime") {
		t.Errorf("New: %v, want a lifetime error", err)
	}
}

// Defect (issue 18, items 6, 10 and 11): every InvalidRequest read "check
// the identity annotation" and every token refusal "check the trust
// policy", also when the agent's lifetime or audience was refused, or when
// no provider was asked at all. The pod is told the cause.
func TestClassifyPointsAtTheCause(t *testing.T) {
	upstream := func(kind exchange.ErrorKind, code string, cause exchange.Cause, hint string) error {
		return &exchange.Error{Kind: kind, Code: code, Cause: cause, Hint: hint, Err: errors.New("upstream said something")}
	}
	for _, tc := range []struct {
		name      string
		err       error
		class     Class
		code      string
		want      []string
		forbidden []string
	}{
		{"lifetime refused", upstream(exchange.InvalidRequest, "INVALID_ARGUMENT", exchange.CauseLifetime, "asked 2h, Google grants 1h (--gcp-token-lifetime)"),
			Invalid, CodeLifetimeRefused, []string{"lifetime", "--gcp-token-lifetime", "not the cause"}, []string{"check the identity annotation"}},
		{"audience refused, final", upstream(exchange.InvalidToken, "InvalidIdentityToken", exchange.CauseAudience, "the token's audience sts.amazonaws.com"),
			Refused, CodeAudienceRefused, []string{"audience", "--audience", "sts.amazonaws.com", "not the cause"}, []string{"check the identity annotation", "trust policy"}},
		{"audience refused, provisional", &provisionalDenial{err: upstream(exchange.InvalidToken, "InvalidParameterValue", exchange.CauseAudience, "")},
			Unavailable, CodeAudienceRefused, []string{"audience", "--audience", "retrying"}, []string{"trust policy"}},
		{"identity form, nothing sent", upstream(exchange.InvalidRequest, "", exchange.CauseIdentityForm, `partition "minio" is not accepted`),
			Invalid, CodeInvalidRole, []string{"no provider was asked", `partition "minio"`}, []string{"the identity provider rejected"}},
		{"identity refused as before", upstream(exchange.InvalidRequest, "ValidationError", exchange.CauseIdentity, ""),
			Invalid, CodeInvalidRole, []string{"check the identity annotation", "ValidationError"}, nil},
		{"denial as before, with the exchanger's hint", upstream(exchange.Denied, "AADSTS700016", exchange.CauseIdentity, "application x was not found in tenant y"),
			Refused, CodeUpstreamDenied, []string{"trust policy", "was not found in tenant y"}, nil},
		{"a retryable failure stays retryable whatever its cause", upstream(exchange.Transient, "INTERNAL", exchange.CauseLifetime, ""),
			Unavailable, CodeUnavailable, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := Classify(tc.err)
			if f.Class != tc.class || f.Code != tc.code {
				t.Fatalf("%+v, want class %v code %s", f, tc.class, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(f.Message, w) {
					t.Errorf("message %q lacks %q", f.Message, w)
				}
			}
			for _, w := range tc.forbidden {
				if strings.Contains(f.Message, w) {
					t.Errorf("message %q says %q", f.Message, w)
				}
			}
			if strings.Contains(f.Message, "upstream said something") {
				t.Errorf("message %q quotes the upstream text", f.Message)
			}
		})
	}
}
