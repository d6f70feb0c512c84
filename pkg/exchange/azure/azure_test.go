package azure_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/azure"
)

const (
	tenant      = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	clientID    = "11111111-2222-3333-4444-555555555555"
	issuer      = "https://oidc.cluster.example/issuer"
	subject     = "system:serviceaccount:team-a:app"
	accessToken = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-access-token-0123456789abcdefghijklmnop"
	resource    = "https://vault.azure.net"
)

// assertionToken looks like a JWT with the issuer and subject the error
// texts name, and parts long enough that a peer quoting any one is caught.
var assertionToken = func() string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","kid":"k1"}`)) + "." +
		enc(fmt.Appendf(nil, `{"aud":["api://AzureADTokenExchange"],"iss":%q,"sub":%q,"exp":1800000000}`, issuer, subject)) + "." +
		enc([]byte("signature-of-the-service-account-token-that-is-long"))
}()

var t0 = time.Date(2026, 12, 2, 0, 30, 0, 0, time.UTC)

type call struct {
	method, path string
	header       http.Header
	form         url.Values
}

type reply struct {
	status int
	body   string
	block  bool // wait for the request's context to end, answer nothing
}

// peer is an Entra token endpoint in an httptest server.
type peer struct {
	srv *httptest.Server
	// during, if set, runs while a request is being handled (before the
	// answer is written).
	during func()

	mu    sync.Mutex
	calls []call
	rep   reply
}

func newPeer(t *testing.T) *peer {
	t.Helper()
	p := &peer{rep: reply{status: 200, body: `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"` + accessToken + `"}`}}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		p.mu.Lock()
		p.calls = append(p.calls, call{method: r.Method, path: r.URL.Path, header: r.Header.Clone(), form: r.PostForm})
		rep, during := p.rep, p.during
		p.mu.Unlock()
		if during != nil {
			during()
		}
		if rep.block {
			<-r.Context().Done()
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(rep.status)
		_, _ = io.WriteString(w, rep.body)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *peer) set(r reply) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rep = r
}

func (p *peer) received() []call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]call(nil), p.calls...)
}

func newExchanger(t *testing.T, p *peer, mod func(*azure.Config)) *azure.Exchanger {
	t.Helper()
	cfg := azure.Config{
		AuthorityHost: p.srv.URL + "/",
		HTTPClient:    p.srv.Client(),
		Clock:         clocktesting.NewFakePassiveClock(t0),
	}
	if mod != nil {
		mod(&cfg)
	}
	x, err := azure.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func req(scopes ...string) exchange.Request {
	return exchange.Request{
		Token: exchange.Secret(assertionToken), Want: exchange.KindAccessToken,
		Role: clientID, Tenant: tenant, Scopes: scopes,
		SessionName: "team-a_app", Duration: 2 * time.Hour,
	}
}

func entraErr(oauth string, code int64, desc string) string {
	b, _ := json.Marshal(map[string]any{
		"error": oauth, "error_codes": []int64{code},
		"error_description": desc + "\r\nTrace ID: 30b6df93-efd2-459c-ae6a-bad0838f6f00\r\nCorrelation ID: dffc6012-a4af-4f00-80ab-3e831069b3cc\r\nTimestamp: 2026-12-02 00:30:00Z",
		"timestamp":         "2026-12-02 00:30:00Z", "trace_id": "30b6df93-efd2-459c-ae6a-bad0838f6f00",
		"correlation_id": "dffc6012-a4af-4f00-80ab-3e831069b3cc",
		"error_uri":      fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", code),
	})
	return string(b)
}

func asError(t *testing.T, err error) *exchange.Error {
	t.Helper()
	var xe *exchange.Error
	if !errors.As(err, &xe) {
		t.Fatalf("error %v (%T) is not an *exchange.Error", err, err)
	}
	return xe
}

// assertNoSecret fails if the error's text, in any format and along its
// whole wrap chain, contains the assertion, a part of it or the access
// token.
func assertNoSecret(t *testing.T, err error) {
	t.Helper()
	var texts []string
	for e := err; e != nil; e = errors.Unwrap(e) {
		texts = append(texts, e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e))
	}
	var xe *exchange.Error
	if errors.As(err, &xe) {
		texts = append(texts, xe.Code)
	}
	secrets := append(strings.Split(assertionToken, "."), accessToken, "entra-access-token")
	for _, text := range texts {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("error text %q contains a secret", text)
				return
			}
		}
	}
}

func TestExchangeSendsEveryField(t *testing.T) {
	for _, tc := range []struct{ name, tenant, resource, scope string }{
		{"resource", tenant, resource, resource + "/.default"},
		{"scope already .default", tenant, resource + "/.default", resource + "/.default"},
		{"resource with trailing slash", tenant, "https://management.azure.com/", "https://management.azure.com//.default"},
		{"application ID URI", tenant, "api://" + clientID, "api://" + clientID + "/.default"},
		{"tenant domain name", "contoso.onmicrosoft.com", resource, resource + "/.default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			r := req(tc.resource)
			r.Tenant = tc.tenant
			c, err := newExchanger(t, p, nil).Exchange(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			calls := p.received()
			if len(calls) != 1 {
				t.Fatalf("%d calls, want 1", len(calls))
			}
			got := calls[0]
			if got.method != http.MethodPost || got.path != "/"+tc.tenant+"/oauth2/v2.0/token" {
				t.Errorf("call %s %s, want POST /%s/oauth2/v2.0/token", got.method, got.path, tc.tenant)
			}
			if ct := got.header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type %q", ct)
			}
			if a := got.header.Get("Authorization"); a != "" {
				t.Errorf("Authorization %q; the assertion travels in the form only", a)
			}
			want := url.Values{
				"grant_type":            {"client_credentials"},
				"client_id":             {clientID},
				"scope":                 {tc.scope},
				"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
				"client_assertion":      {assertionToken},
			}
			if !reflect.DeepEqual(got.form, want) {
				t.Errorf("form\n got %v\nwant %v", got.form, want)
			}
			if c.Kind != exchange.KindAccessToken || c.AccessToken.Reveal() != accessToken || c.TokenType != "Bearer" ||
				!reflect.DeepEqual(c.Scopes, []string{tc.scope}) {
				t.Errorf("credentials %+v (token %q)", c, c.AccessToken.Reveal())
			}
		})
	}
}

func TestScope(t *testing.T) {
	for in, want := range map[string]string{
		"https://vault.azure.net":          "https://vault.azure.net/.default",
		"https://vault.azure.net/.default": "https://vault.azure.net/.default",
		"https://management.azure.com/":    "https://management.azure.com//.default",
	} {
		if got := azure.Scope(in); got != want {
			t.Errorf("Scope(%q) = %q, want %q", in, got, want)
		}
	}
}

// The expiration is expires_in counted from before the request was sent:
// the clock moves on while the peer answers, and the expiration must not.
func TestExpirationCountedFromBeforeTheRequest(t *testing.T) {
	for _, tc := range []struct{ name, expiresIn string }{
		{"number", `3599`},
		{"string", `"3599"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(reply{status: 200, body: `{"token_type":"bearer","expires_in":` + tc.expiresIn + `,"access_token":"` + accessToken + `"}`})
			clk := clocktesting.NewFakePassiveClock(t0)
			p.during = func() { clk.SetTime(t0.Add(40 * time.Second)) }
			c, err := newExchanger(t, p, func(cfg *azure.Config) { cfg.Clock = clk }).Exchange(context.Background(), req(resource))
			if err != nil {
				t.Fatal(err)
			}
			if want := t0.Add(3599 * time.Second); !c.Expiration.Equal(want) || c.Expiration.Location() != time.UTC {
				t.Errorf("Expiration %v, want %v UTC", c.Expiration, want)
			}
			if c.TokenType != "Bearer" {
				t.Errorf("TokenType %q, want Bearer", c.TokenType)
			}
		})
	}
}

func TestRefusedBeforeAnyCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*exchange.Request)
		want string
	}{
		{"empty token", func(r *exchange.Request) { r.Token = "" }, "empty ServiceAccount token"},
		{"AWS credentials", func(r *exchange.Request) { r.Want = exchange.KindAWS }, "access tokens"},
		{"ID token", func(r *exchange.Request) { r.Want = exchange.KindIDToken }, "access tokens"},
		{"no client ID", func(r *exchange.Request) { r.Role = "" }, "not an application (client) ID"},
		{"client ID not a GUID", func(r *exchange.Request) { r.Role = "my-app" }, `"my-app" is not an application`},
		{"client ID with path", func(r *exchange.Request) { r.Role = clientID + "/../x" }, "not an application"},
		{"no tenant", func(r *exchange.Request) { r.Tenant = "" }, "not a tenant ID"},
		{"tenant with path", func(r *exchange.Request) { r.Tenant = tenant + "/oauth2" }, "not a tenant ID"},
		{"tenant with query", func(r *exchange.Request) { r.Tenant = "contoso.com?x=1" }, "not a tenant ID"},
		{"tenant single label", func(r *exchange.Request) { r.Tenant = "contoso" }, "not a tenant ID"},
		{"tenant common", func(r *exchange.Request) { r.Tenant = "common" }, "multi-tenant"},
		{"tenant Organizations", func(r *exchange.Request) { r.Tenant = "Organizations" }, "multi-tenant"},
		{"no resource", func(r *exchange.Request) { r.Scopes = nil }, "no resource"},
		{"two resources", func(r *exchange.Request) { r.Scopes = []string{resource, "https://storage.azure.com"} }, "one resource per token"},
		{"resource with space", func(r *exchange.Request) { r.Scopes = []string{"https://a b"} }, "not a resource"},
		{"resource with newline", func(r *exchange.Request) { r.Scopes = []string{"https://a\nb"} }, "not a resource"},
		{"empty resource", func(r *exchange.Request) { r.Scopes = []string{""} }, "not a resource"},
		{"bare .default", func(r *exchange.Request) { r.Scopes = []string{"/.default"} }, "not a resource"},
		{"huge resource", func(r *exchange.Request) { r.Scopes = []string{"https://" + strings.Repeat("a", 600)} }, "not a resource"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			r := req(resource)
			tc.mod(&r)
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), r)
			if err == nil {
				t.Fatal("no error")
			}
			if xe := asError(t, err); xe.Kind != exchange.InvalidRequest || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v (%v), want InvalidRequest saying %q", err, xe.Kind, tc.want)
			}
			if n := len(p.received()); n != 0 {
				t.Errorf("%d calls made", n)
			}
			assertNoSecret(t, err)
		})
	}
}

func TestValidTenantAndClientID(t *testing.T) {
	for s, want := range map[string]bool{
		tenant: true, strings.ToUpper(tenant): true, "contoso.onmicrosoft.com": true, "contoso.com": true,
		"common": false, "consumers": false, "contoso": false, "-a.com": false, "a..com": false, "a.com/": false, "": false,
		"72f988bf-86f1-41af-91ab-2d7cd011db4": false,
	} {
		if got := azure.ValidTenant(s); got != want {
			t.Errorf("ValidTenant(%q) = %v", s, got)
		}
	}
	for s, want := range map[string]bool{clientID: true, "contoso.com": false, "": false, clientID + "0": false} {
		if got := azure.ValidClientID(s); got != want {
			t.Errorf("ValidClientID(%q) = %v", s, got)
		}
	}
}

func TestErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		kind   exchange.ErrorKind
		code   string
		says   []string
	}{
		{"no matching federated credential", 400, entraErr("invalid_request", 70021,
			"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '"+issuer+"'. Assertion Subject: '"+subject+"'. Assertion Audience: 'api://AzureADTokenExchange'."),
			exchange.Denied, "AADSTS70021", []string{"no federated identity credential on application " + clientID, "issuer " + issuer, "subject " + subject, "audience api://AzureADTokenExchange", "Assertion Subject: '" + subject + "'", "Trace ID: 30b6df93"}},
		{"issuer mismatch", 400, entraErr("invalid_client", 700211,
			"AADSTS700211: No matching federated identity record found for presented assertion issuer '"+issuer+"'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."),
			exchange.Denied, "AADSTS700211", []string{"application " + clientID + " has issuer " + issuer, "trailing slash"}},
		{"audience mismatch", 400, entraErr("invalid_client", 700212, "AADSTS700212: No matching federated identity record found for presented assertion audience 'x'."),
			exchange.Denied, "AADSTS700212", []string{"audience to api://AzureADTokenExchange"}},
		{"subject mismatch", 400, entraErr("invalid_client", 700213, "AADSTS700213: No matching federated identity record found for presented assertion subject '"+subject+"'."),
			exchange.Denied, "AADSTS700213", []string{"has subject " + subject}},
		{"subject case mismatch", 400, entraErr("invalid_client", 7002138,
			"AADSTS7002138: No matching federated identity record found for presented assertion subject '"+subject+"'. The subject matches with case-insensitive comparison, but not with case-sensitive comparison."),
			exchange.Denied, "AADSTS7002138", []string{"matches subject " + subject + " only ignoring case", "case-sensitively"}},
		{"no federated credentials", 400, entraErr("invalid_client", 70025, "AADSTS70025: The client has no configured federated identity credentials."),
			exchange.Denied, "AADSTS70025", []string{"has no federated identity credentials"}},
		{"application not found", 400, entraErr("unauthorized_client", 700016,
			"AADSTS700016: Application with identifier '"+clientID+"' was not found in the directory '"+tenant+"'."),
			// Issue 18, item 9: it was InvalidRequest (a 400 on the surface,
			// after which Python azure-identity gives up for good), though
			// Entra also answers it while a new application replicates.
			exchange.Denied, "AADSTS700016", []string{"application " + clientID + " was not found in tenant " + tenant, "client-id annotation"}},
		{"tenant not found", 400, entraErr("invalid_request", 90002, "AADSTS90002: Tenant 'x' not found."),
			exchange.InvalidRequest, "AADSTS90002", []string{"tenant " + tenant + " was not found"}},
		{"tenant not found 50034", 400, entraErr("invalid_request", 50034, "AADSTS50034: The account does not exist."),
			exchange.InvalidRequest, "AADSTS50034", []string{"was not found"}},
		{"invalid scope", 400, entraErr("invalid_scope", 70011, "AADSTS70011: The provided value for the input parameter 'scope' isn't valid."),
			exchange.InvalidRequest, "AADSTS70011", []string{"resource is not valid"}},
		{"resource not found", 400, entraErr("invalid_resource", 500011, "AADSTS500011: The resource principal named x was not found."),
			exchange.InvalidRequest, "AADSTS500011", nil},
		{"assertion expired", 400, entraErr("invalid_client", 700024, "AADSTS700024: Client assertion is not within its valid time range."),
			exchange.InvalidToken, "AADSTS700024", []string{"rejected the ServiceAccount token", issuer}},
		{"assertion signature", 401, entraErr("invalid_client", 700027, "AADSTS700027: Client assertion failed signature validation."),
			exchange.InvalidToken, "AADSTS700027", nil},
		{"request loop at 400", 400, entraErr("invalid_request", 50196, "AADSTS50196: The server terminated an operation because it encountered a client request loop."),
			exchange.Throttled, "AADSTS50196", nil},
		{"429", 429, entraErr("temporarily_unavailable", 90055, "AADSTS90055: Too many requests."),
			exchange.Throttled, "AADSTS90055", nil},
		{"429 with a refusal code", 429, entraErr("invalid_client", 70021, "AADSTS70021: x"),
			exchange.Throttled, "AADSTS70021", nil},
		{"429 empty", 429, "", exchange.Throttled, "", []string{"unparsable"}},
		{"500", 500, entraErr("server_error", 50000, "AADSTS50000: There was an error issuing a token."),
			exchange.Transient, "AADSTS50000", nil},
		{"503 with a refusal code", 503, entraErr("invalid_client", 700016, "AADSTS700016: x"),
			exchange.Transient, "AADSTS700016", nil},
		{"502 html", 502, "<html>bad gateway</html>", exchange.Transient, "", []string{"HTTP 502", "unparsable"}},
		{"transient at 400", 400, entraErr("invalid_request", 90033, "AADSTS90033: A transient error has occurred."),
			exchange.Transient, "AADSTS90033", nil},
		{"code only in description", 400, `{"error":"invalid_request","error_description":"AADSTS70021: No matching federated identity record found."}`,
			exchange.Denied, "AADSTS70021", []string{"no federated identity credential"}},
		{"unknown code, invalid_client", 400, entraErr("invalid_client", 9999999, "AADSTS9999999: new."),
			exchange.Denied, "AADSTS9999999", nil},
		{"unknown code, unauthorized_client at 401", 401, entraErr("unauthorized_client", 9999999, "AADSTS9999999: new."),
			exchange.InvalidRequest, "AADSTS9999999", nil},
		{"unknown code, invalid_grant", 400, entraErr("invalid_grant", 9999999, "AADSTS9999999: new."),
			exchange.InvalidToken, "AADSTS9999999", nil},
		{"oauth only", 400, `{"error":"invalid_client"}`, exchange.Denied, "invalid_client", nil},
		{"401 bare", 401, "", exchange.InvalidToken, "", nil},
		{"403 bare", 403, "", exchange.Denied, "", nil},
		{"404 bare", 404, "", exchange.InvalidRequest, "", nil},
		{"redirect", 302, "", exchange.Transient, "", nil},
		{"long description is cut", 400, entraErr("invalid_client", 700211, "AADSTS700211: "+strings.Repeat("x", 600)+"TAIL"),
			exchange.Denied, "AADSTS700211", []string{strings.Repeat("x", 100) + "..."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(reply{status: tc.status, body: tc.body})
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
			xe := asError(t, err)
			if xe.Kind != tc.kind || xe.Code != tc.code {
				t.Errorf("Kind %v Code %q, want %v %q: %v", xe.Kind, xe.Code, tc.kind, tc.code, err)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.ContainsAny(err.Error(), "\r\n") || strings.Contains(err.Error(), "TAIL") || len(err.Error()) > 2000 {
				t.Errorf("error %q spans lines", err)
			}
			if n := len(p.received()); n != 1 {
				t.Errorf("%d calls, want 1 (no retries)", n)
			}
			assertNoSecret(t, err)
		})
	}
}

func TestUnusableAnswersAreTransient(t *testing.T) {
	for name, body := range map[string]string{
		"not JSON":           `<html>`,
		"no access_token":    `{"token_type":"Bearer","expires_in":3599}`,
		"no expires_in":      `{"token_type":"Bearer","access_token":"` + accessToken + `"}`,
		"zero expires_in":    `{"token_type":"Bearer","expires_in":0,"access_token":"` + accessToken + `"}`,
		"negative":           `{"token_type":"Bearer","expires_in":-5,"access_token":"` + accessToken + `"}`,
		"fractional":         `{"token_type":"Bearer","expires_in":1.5,"access_token":"` + accessToken + `"}`,
		"expires_in garbage": `{"token_type":"Bearer","expires_in":"soon","access_token":"` + accessToken + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			p := newPeer(t)
			p.set(reply{status: 200, body: body})
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
			if xe := asError(t, err); xe.Kind != exchange.Transient || !strings.Contains(err.Error(), "HTTP 200") {
				t.Errorf("error %v (%v), want Transient", err, xe.Kind)
			}
			assertNoSecret(t, err)
		})
	}
}

func TestNetworkFailuresAreTransient(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		p := newPeer(t)
		x := newExchanger(t, p, nil)
		p.srv.Close()
		_, err := x.Exchange(context.Background(), req(resource))
		if xe := asError(t, err); xe.Kind != exchange.Transient || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error %v (%v), want Transient naming the refusal", err, xe.Kind)
		}
		assertNoSecret(t, err)
	})
	t.Run("client timeout", func(t *testing.T) {
		p := newPeer(t)
		p.set(reply{block: true})
		x := newExchanger(t, p, func(c *azure.Config) {
			c.HTTPClient = &http.Client{Timeout: 50 * time.Millisecond, Transport: p.srv.Client().Transport}
		})
		_, err := x.Exchange(context.Background(), req(resource))
		if xe := asError(t, err); xe.Kind != exchange.Transient || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("error %v (%v), want Transient timeout", err, xe.Kind)
		}
		assertNoSecret(t, err)
	})
	t.Run("caller's deadline", func(t *testing.T) {
		p := newPeer(t)
		p.set(reply{block: true})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := newExchanger(t, p, nil).Exchange(ctx, req(resource))
		xe := asError(t, err)
		if xe.Kind != exchange.Transient || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "caller's context") {
			t.Errorf("error %v (%v), want Transient wrapping DeadlineExceeded", err, xe.Kind)
		}
		assertNoSecret(t, err)
	})
	t.Run("503 once is not retried", func(t *testing.T) {
		p := newPeer(t)
		p.set(reply{status: 503})
		_, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
		if n := len(p.received()); err == nil || n != 1 {
			t.Errorf("err %v after %d calls, want one failed call", err, n)
		}
	})
}

// TestSecretsNeverInErrors has a peer that quotes the assertion, or a part
// of it, everywhere an error text could come from.
func TestSecretsNeverInErrors(t *testing.T) {
	parts := strings.Split(assertionToken, ".")
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"description quotes token", 400, entraErr("invalid_client", 70021, "AADSTS70021: bad assertion "+assertionToken)},
		{"description quotes payload", 400, entraErr("invalid_client", 700211, "claims "+parts[1])},
		{"description quotes signature", 500, entraErr("server_error", 50000, "sig "+parts[2])},
		{"oauth error is the token", 400, `{"error":"` + assertionToken + `"}`},
		{"oauth error is the header", 400, `{"error":"` + parts[0] + `"}`},
		{"oauth error is the signature", 400, `{"error":"` + parts[2] + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(reply{status: tc.status, body: tc.body})
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
			asError(t, err)
			assertNoSecret(t, err)
		})
	}
	t.Run("token claims that quote the token are not repeated", func(t *testing.T) {
		// A subject claim holding a part of the token itself.
		enc := base64.RawURLEncoding.EncodeToString
		sig := enc([]byte("signature-bytes-long-enough-to-count"))
		tok := enc([]byte(`{"alg":"RS256"}`)) + "." + enc(fmt.Appendf(nil, `{"iss":%q,"sub":%q}`, issuer, sig)) + "." + sig
		p := newPeer(t)
		p.set(reply{status: 400, body: entraErr("invalid_request", 70021, "AADSTS70021: no match")})
		r := req(resource)
		r.Token = exchange.Secret(tok)
		_, err := newExchanger(t, p, nil).Exchange(context.Background(), r)
		if strings.Contains(err.Error(), sig) {
			t.Errorf("error %q repeats a part of the token", err)
		}
	})
	// Successful credentials print redacted.
	p := newPeer(t)
	c, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, accessToken) {
			t.Errorf("credentials print their token: %s", s)
		}
	}
}

func TestNewAuthorityHost(t *testing.T) {
	x, err := azure.New(azure.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := x.TokenURL(tenant), "https://login.microsoftonline.com/"+tenant+"/oauth2/v2.0/token"; got != want {
		t.Errorf("default TokenURL %q, want %q", got, want)
	}
	for _, host := range []string{"https://login.microsoftonline.us", "https://login.microsoftonline.us/", "https://login.microsoftonline.us//"} {
		x, err := azure.New(azure.Config{AuthorityHost: host})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := x.TokenURL(tenant), "https://login.microsoftonline.us/"+tenant+"/oauth2/v2.0/token"; got != want {
			t.Errorf("TokenURL with %q: %q, want %q", host, got, want)
		}
	}
	for _, host := range []string{"login.microsoftonline.com", "ftp://login.example/", "https://", "https://login.example/?x=1", "https://login.example/?", "https://u:p@login.example/", "https://login.example/#f", "://"} {
		if _, err := azure.New(azure.Config{AuthorityHost: host}); err == nil {
			t.Errorf("New accepted authority host %q", host)
		}
	}
}

func TestConcurrent(t *testing.T) {
	p := newPeer(t)
	x := newExchanger(t, p, nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := x.Exchange(context.Background(), req(resource)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(p.received()); n != 8 {
		t.Errorf("%d calls, want 8", n)
	}
}

// The exchanger fits the broker's one-method interface.
var _ interface {
	Exchange(context.Context, exchange.Request) (exchange.Credentials, error)
} = (*azure.Exchanger)(nil)
