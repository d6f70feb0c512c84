package azureidentity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// The tests in this file get tokens with azidentity v1.15.0 (over MSAL Go)
// from an httptest server running the handler, the way a pod does: the
// environment names the endpoint (IDENTITY_ENDPOINT, IDENTITY_HEADER).
// The environment is process-wide, so none of them runs in parallel
// (t.Setenv enforces it).

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

// setPodEnv sets the process environment as a pod opted in to the agent
// has it, and clears what would send azidentity elsewhere.
func setPodEnv(t *testing.T, ts *httptest.Server, header string) {
	t.Setenv("IDENTITY_ENDPOINT", ts.URL+TokenPath)
	t.Setenv("IDENTITY_HEADER", header)
	for _, k := range []string{"MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT",
		"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
		"AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TOKEN_CREDENTIALS", "AZURE_POD_IDENTITY_AUTHORITY_HOST"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
}

var resourceSeq atomic.Int64

// uniqueResource is a resource no other test asked for: MSAL Go caches
// managed-identity tokens process-wide, so a resource another test got a
// token for would be answered from that cache without a request.
func uniqueResource(name string) string {
	return fmt.Sprintf("https://%s-%d.test.example", name, resourceSeq.Add(1))
}

// fastRetry keeps azcore's retries but makes them quick. MaxRetryDelay
// stays above the handler's Retry-After (whole seconds): azcore does not
// retry at all when Retry-After exceeds it.
var fastRetry = policy.ClientOptions{Retry: policy.RetryOptions{RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 5 * time.Second}}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func tokenFor(resource string) policy.TokenRequestOptions {
	return policy.TokenRequestOptions{Scopes: []string{resource + "/.default"}}
}

func checkToken(t *testing.T, tok azcore.AccessToken, resource string) {
	t.Helper()
	if tok.Token != testToken+"/"+resource {
		t.Errorf("token %q, want the one for %s", tok.Token, resource)
	}
	if left := time.Until(tok.ExpiresOn); left < 59*time.Minute || left > time.Hour {
		t.Errorf("token expires in %v, want about an hour", left)
	}
}

func wantRequests(t *testing.T, fb *fakeBroker, want ...broker.Request) {
	t.Helper()
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if !slices.Equal(fb.reqs, want) {
		t.Errorf("requests %+v, want %+v", fb.reqs, want)
	}
}

func TestGoManagedIdentityCredential(t *testing.T) {
	vault, arm := uniqueResource("vault"), uniqueResource("arm")+"/"
	ts, fb := serveReal(t, nil)
	setPodEnv(t, ts, testHeader)
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	tok, err := cred.GetToken(ctx, tokenFor(vault))
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, tok, vault)
	// ARM's resource keeps its trailing slash (azidentity sends
	// "https://management.azure.com/" for "https://management.azure.com//.default").
	tok, err = cred.GetToken(ctx, tokenFor(arm))
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, tok, arm)
	wantRequests(t, fb,
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: vault},
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: arm})
}

func TestGoManagedIdentityClientID(t *testing.T) {
	vault := uniqueResource("vault")
	ts, fb := serveReal(t, nil)
	setPodEnv(t, ts, testHeader)
	ctx := ctxT(t)
	own, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ClientOptions: fastRetry, ID: azidentity.ClientID(testClientID)})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := own.GetToken(ctx, tokenFor(vault))
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, tok, vault)

	// Another client ID: the broker's 403 reaches the application as an
	// AuthenticationFailedError carrying the code and the message, and is
	// not retried.
	other, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ClientOptions: fastRetry, ID: azidentity.ClientID(otherClient)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.GetToken(ctx, tokenFor(vault))
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || afe.RawResponse == nil || afe.RawResponse.StatusCode != 403 {
		t.Fatalf("another client ID: %v", err)
	}
	if !strings.Contains(err.Error(), broker.CodeIdentityNotAllowed) || !strings.Contains(err.Error(), errRefused.Message) {
		t.Errorf("the refusal does not reach the application: %v", err)
	}
	wantRequests(t, fb,
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Identity: testClientID, Scope: vault},
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Identity: otherClient, Scope: vault})
}

// TestGoRetriesTransient: a 503 (Unavailable) and a 429 (Throttled) are
// retried by the client and end in a token.
func TestGoRetriesTransient(t *testing.T) {
	for name, f := range map[string]broker.Failure{
		"unavailable": {Class: broker.Unavailable, Code: broker.CodeUnavailable, Message: "down", RetryAfter: time.Millisecond},
		"throttled":   {Class: broker.Throttled, Code: broker.CodeThrottled, Message: "slow"},
	} {
		t.Run(name, func(t *testing.T) {
			vault := uniqueResource("vault")
			ts, fb := serveReal(t, func(fb *fakeBroker, c *Config) {
				fb.failFirst = 2
				fb.Classify = func(error) broker.Failure { return f }
			})
			setPodEnv(t, ts, testHeader)
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: fastRetry})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := cred.GetToken(ctxT(t), tokenFor(vault))
			if err != nil {
				t.Fatalf("not retried to success: %v", err)
			}
			checkToken(t, tok, vault)
			if fb.calls() != 3 {
				t.Errorf("%d broker calls, want 3", fb.calls())
			}
		})
	}
}

func TestGoWrongIdentityHeader(t *testing.T) {
	ts, fb := serveReal(t, nil)
	setPodEnv(t, ts, "not-the-header")
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cred.GetToken(ctxT(t), tokenFor(uniqueResource("vault")))
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || afe.RawResponse == nil || afe.RawResponse.StatusCode != 401 {
		t.Fatalf("wrong header: %v", err)
	}
	if !strings.Contains(err.Error(), "X-IDENTITY-HEADER") {
		t.Errorf("the error does not say what to fix: %v", err)
	}
	if fb.calls() != 0 {
		t.Errorf("broker asked %d times", fb.calls())
	}
}

func TestGoDefaultAzureCredential(t *testing.T) {
	s1, s2, s3 := uniqueResource("storage"), uniqueResource("storage"), uniqueResource("storage")
	ts, fb := serveReal(t, nil)
	setPodEnv(t, ts, testHeader)
	t.Setenv("HOME", t.TempDir()) // no Azure CLI login to fall back on
	ctx := ctxT(t)
	cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cred.GetToken(ctx, tokenFor(s1))
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, tok, s1)

	// With AZURE_CLIENT_ID (as the Azure Workload Identity webhook sets
	// it), DefaultAzureCredential names the client ID.
	t.Setenv("AZURE_CLIENT_ID", testClientID)
	cred, err = azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	tok, err = cred.GetToken(ctx, tokenFor(s2))
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, tok, s2)

	// A refused pod: DefaultAzureCredential stops at the managed identity's
	// failure (AuthenticationFailedError ends the chain) and shows it.
	fb.mu.Lock()
	fb.credErr = &broker.Refusal{Code: broker.CodeDefaultServiceAccount, Message: "pods on the default ServiceAccount of namespace ns get no credentials"}
	fb.mu.Unlock()
	os.Unsetenv("AZURE_CLIENT_ID")
	cred, err = azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cred.GetToken(ctx, tokenFor(s3))
	if err == nil || !strings.Contains(err.Error(), broker.CodeDefaultServiceAccount) || !strings.Contains(err.Error(), "403") {
		t.Errorf("refusal through DefaultAzureCredential: %v", err)
	}
	wantRequests(t, fb,
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: s1},
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Identity: testClientID, Scope: s2},
		broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: s3})
}

// TestGoIMDSForm: with no IDENTITY_ENDPOINT azidentity asks IMDS at its
// fixed address; every connection goes to the handler instead, which
// answers the IMDS form (Metadata: true, every value a string).
func TestGoIMDSForm(t *testing.T) {
	ts, fb := serveReal(t, nil)
	setPodEnv(t, ts, testHeader)
	os.Unsetenv("IDENTITY_ENDPOINT")
	os.Unsetenv("IDENTITY_HEADER")
	var d net.Dialer
	toServer := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", ts.Listener.Addr().String())
		},
	}}
	opts := fastRetry
	opts.Transport = toServer
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts})
	if err != nil {
		t.Fatal(err)
	}
	vault := uniqueResource("imds")
	tok, err := cred.GetToken(ctxT(t), tokenFor(vault))
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, tok, vault)
	wantRequests(t, fb, broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: vault})
}
