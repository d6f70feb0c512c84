package gcemetadata

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2/google"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// The tests in this file decode the surface's answers with Google's own Go
// clients, cloud.google.com/go/compute/metadata and golang.org/x/oauth2/google,
// against an httptest server running the handler. The caller is 127.0.0.1.

var loopback = netip.MustParseAddr("127.0.0.1")

// serveReal starts the handler on loopback; the fake broker's clock is the
// real one, because the clients compute expiry with time.Now.
func serveReal(t *testing.T, mod func(*fakeBroker, *Config)) (*httptest.Server, *fakeBroker) {
	t.Helper()
	h, fb := newTest(t, func(fb *fakeBroker, c *Config) {
		fb.clock.SetTime(time.Now())
		c.Clock = nil // real clock
		if mod != nil {
			mod(fb, c)
		}
	})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, fb
}

// metadataClient is a compute/metadata client whose every connection goes
// to ts, whatever host it thinks it talks to.
func metadataClient(ts *httptest.Server) *metadata.Client {
	var d net.Dialer
	return metadata.NewClient(&http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", ts.Listener.Addr().String())
		},
	}})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGoMetadataClient(t *testing.T) {
	ts, fb := serveReal(t, nil)
	c := metadataClient(ts)
	ctx := ctxT(t)

	if got, err := c.EmailWithContext(ctx, "default"); err != nil || got != testEmail {
		t.Errorf("Email(default) = %q, %v; want %q", got, err, testEmail)
	}
	if got, err := c.EmailWithContext(ctx, testEmail); err != nil || got != testEmail {
		t.Errorf("Email(%s) = %q, %v", testEmail, got, err)
	}
	if got, err := c.ProjectIDWithContext(ctx); err != nil || got != testProject {
		t.Errorf("ProjectID = %q, %v", got, err)
	}
	if got, err := c.NumericProjectIDWithContext(ctx); err != nil || got != testNumber {
		t.Errorf("NumericProjectID = %q, %v", got, err)
	}
	if got, err := c.ScopesWithContext(ctx, "default"); err != nil || !slices.Equal(got, []string{DefaultScope}) {
		t.Errorf("Scopes = %q, %v", got, err)
	}
	if got, err := c.GetWithContext(ctx, "universe/universe-domain"); err != nil || got != "googleapis.com" {
		t.Errorf("universe = %q, %v", got, err)
	}
	// The listing without its slash: the client follows the redirect.
	if got, err := c.GetWithContext(ctx, "instance/service-accounts"); err != nil || got != "default/\n"+testEmail+"/\n" {
		t.Errorf("service-accounts = %q, %v", got, err)
	}
	tok, err := c.GetWithContext(ctx, "instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/b,https://www.googleapis.com/auth/a")
	if err != nil || !strings.Contains(tok, `"access_token":"`+testToken) || !strings.Contains(tok, `"token_type":"Bearer"`) {
		t.Errorf("token = %q, %v", tok, err)
	}
	id, err := c.GetWithContext(ctx, "instance/service-accounts/default/identity?audience=https://svc.example&format=full")
	if err != nil || strings.Count(id, ".") != 2 {
		t.Errorf("identity = %q, %v", id, err)
	}
	if _, err := c.GetWithContext(ctx, "instance/service-accounts/default/identity"); !isStatus(err, 400) {
		t.Errorf("identity without audience: %v, want a 400", err)
	}
	var nd metadata.NotDefinedError
	if _, err := c.GetWithContext(ctx, "instance/hostname"); !errors.As(err, &nd) {
		t.Errorf("instance/hostname: %v, want NotDefinedError", err)
	}
	if _, err := c.EmailWithContext(ctx, "other@my-project.iam.gserviceaccount.com"); !errors.As(err, &nd) {
		t.Errorf("another account's email: %v, want NotDefinedError", err)
	}

	want := []broker.Request{
		{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: "https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b"},
		{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "https://svc.example"},
	}
	if !slices.Equal(fb.reqs, want) {
		t.Errorf("requests %+v, want %+v", fb.reqs, want)
	}
	for _, a := range fb.addrs {
		if a != loopback {
			t.Errorf("broker asked about %v, want %v", a, loopback)
		}
	}
}

func isStatus(err error, code int) bool {
	var me *metadata.Error
	return errors.As(err, &me) && me.Code == code
}

func TestGoMetadataClientFederated(t *testing.T) {
	ts, _ := serveReal(t, func(fb *fakeBroker, _ *Config) { fb.federated = true })
	c := metadataClient(ts)
	if got, err := c.EmailWithContext(ctxT(t), "default"); err != nil || got != testProject+".svc.id.goog" {
		t.Errorf("Email(default) = %q, %v", got, err)
	}
}

// TestGoMetadataClientFailures: what the Go client makes of each class. It
// retries 503 and 429 (so a transient failure that clears is invisible to
// the caller) and reports 403 and 400 at once.
func TestGoMetadataClientFailures(t *testing.T) {
	ctx := ctxT(t)
	for _, tc := range []struct {
		class broker.Class
		code  int
		calls int // how many times the client asked
	}{
		{broker.Refused, 403, 1},
		{broker.Invalid, 400, 1},
	} {
		ts, fb := serveReal(t, func(fb *fakeBroker, c *Config) {
			fb.credErr = errors.New("no")
			fb.Classify = func(error) broker.Failure { return broker.Failure{Class: tc.class, Code: "X", Message: "y"} }
		})
		_, err := metadataClient(ts).GetWithContext(ctx, "instance/service-accounts/default/token")
		if !isStatus(err, tc.code) || len(fb.reqs) != tc.calls {
			t.Errorf("class %v: %v after %d calls, want status %d after %d", tc.class, err, len(fb.reqs), tc.code, tc.calls)
		}
	}
	// A transient failure, then success: the client retries by itself.
	ts, fb := serveReal(t, nil)
	h := ts.Config.Handler.(*Handler)
	flaky := &flakyBroker{fakeBroker: fb, fail: 2}
	h.b = flaky
	tok, err := metadataClient(ts).GetWithContext(ctx, "instance/service-accounts/default/token")
	if err != nil || !strings.Contains(tok, testToken) || flaky.calls != 3 {
		t.Errorf("after two 503s: %q, %v, %d calls", tok, err, flaky.calls)
	}
}

type flakyBroker struct {
	*fakeBroker
	fail, calls int
}

func (f *flakyBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	return f.Finish(f.Credentials(ctx, addr, req))
}

func (f *flakyBroker) Credentials(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, error) {
	f.calls++
	if f.calls <= f.fail {
		return broker.Answer{}, errors.New("transient")
	}
	return f.fakeBroker.Credentials(ctx, addr, req)
}

// TestOAuth2ComputeTokenSource runs golang.org/x/oauth2/google as a pod
// would: GCE_METADATA_HOST names the agent, and the default credentials
// come from the metadata server.
func TestOAuth2ComputeTokenSource(t *testing.T) {
	ts, fb := serveReal(t, nil)
	t.Setenv("GCE_METADATA_HOST", ts.Listener.Addr().String())
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("HOME", t.TempDir()) // no gcloud application-default file
	t.Setenv("CLOUDSDK_CONFIG", t.TempDir())

	for _, tc := range []struct {
		account string
		scopes  []string
		scope   string
	}{
		{"", nil, DefaultScope},
		{"", []string{"https://www.googleapis.com/auth/b", "https://www.googleapis.com/auth/a"}, "https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b"},
		{testEmail, []string{DefaultScope}, DefaultScope},
	} {
		fb.reqs = nil
		tok, err := google.ComputeTokenSource(tc.account, tc.scopes...).Token()
		if err != nil {
			t.Fatalf("%q %q: %v", tc.account, tc.scopes, err)
		}
		if tok.AccessToken != testToken+"/"+tc.scope || tok.TokenType != "Bearer" {
			t.Errorf("token %q type %q", tok.AccessToken, tok.TokenType)
		}
		if left := time.Until(tok.Expiry); left < 59*time.Minute || left > time.Hour {
			t.Errorf("expiry in %v, want about an hour", left)
		}
		if len(fb.reqs) != 1 || fb.reqs[0].Scope != tc.scope || fb.reqs[0].Identity != "" {
			t.Errorf("requests %+v, want one for %q", fb.reqs, tc.scope)
		}
	}

	creds, err := google.FindDefaultCredentials(ctxT(t), DefaultScope)
	if err != nil {
		t.Fatal(err)
	}
	if creds.ProjectID != testProject {
		t.Errorf("default credentials project %q, want %q", creds.ProjectID, testProject)
	}
	tok, err := creds.TokenSource.Token()
	if err != nil || tok.AccessToken != testToken+"/"+DefaultScope {
		t.Errorf("default credentials token %v, %v", tok, err)
	}
}
