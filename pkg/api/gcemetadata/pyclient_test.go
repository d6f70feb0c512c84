package gcemetadata

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// gcloudThirdParty is where the Google Cloud CLI bundles its Python
// libraries, google-auth among them.
const gcloudThirdParty = "/usr/lib/google-cloud-sdk/lib/third_party"

// needGcloud skips when the Google Cloud CLI is absent, except on CI, where
// the machine image must have it.
func needGcloud(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(gcloudThirdParty + "/google/auth"); err != nil {
		testfake.Unavailable(t, "the Google Cloud CLI's google-auth: %v", err)
	}
}

// clientEnv is the whole environment of a client process pointed at the
// server at hostport: no proxy, no credentials file, empty config
// directories.
func clientEnv(t *testing.T, hostport string, extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"CLOUDSDK_CONFIG=" + t.TempDir(),
		"GCE_METADATA_HOST=" + hostport,
		"GCE_METADATA_IP=" + hostport,
	}, extra...)
}

// pyScript does what an application does with google-auth: default
// credentials (detection through GCE_METADATA_IP, then the account's
// recursive info and its token), the universe domain, and identity tokens
// both through IDTokenCredentials and through fetch_id_token.
const pyScript = `
import json, google.auth, google.auth.transport.requests as tr
from google.auth import compute_engine
from google.oauth2 import id_token
req = tr.Request()
creds, project = google.auth.default()
creds.refresh(req)
out = {"version": google.auth.__version__, "project": project, "token": creds.token,
       "email": creds.service_account_email, "expiry": creds.expiry.isoformat() + "Z",
       "universe": creds.universe_domain}
try:
    idc = compute_engine.IDTokenCredentials(req, "https://svc.example", use_metadata_identity_endpoint=True)
    idc.refresh(req)
    out["id_token"] = idc.token
    out["id_expiry"] = idc.expiry.isoformat() + "Z"
    out["fetched_id"] = id_token.fetch_id_token(req, "https://aud2.example")
except Exception as e:
    out["id_error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
`

type pyOut struct {
	Version   string    `json:"version"`
	Project   string    `json:"project"`
	Token     string    `json:"token"`
	Email     string    `json:"email"`
	Expiry    time.Time `json:"expiry"`
	Universe  string    `json:"universe"`
	IDToken   string    `json:"id_token"`
	IDExpiry  time.Time `json:"id_expiry"`
	FetchedID string    `json:"fetched_id"`
	IDError   string    `json:"id_error"`
}

func runPython(t *testing.T, hostport string) pyOut {
	t.Helper()
	var out pyOut
	surfacetest.RunJSONClient(t, &out, "python google-auth", 60*time.Second, clientEnv(t, hostport, "PYTHONPATH="+gcloudThirdParty),
		"python3", "-c", pyScript)
	return out
}

func TestPythonGoogleAuth(t *testing.T) {
	needGcloud(t)
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	for _, fed := range []bool{false, true} {
		name := "annotated"
		email := testEmail
		if fed {
			name, email = "federated", testProject+FederatedSuffix
		}
		t.Run(name, func(t *testing.T) {
			ts, fb := serveReal(t, func(fb *fakeBroker, _ *Config) { fb.federated = fed })
			out := runPython(t, ts.Listener.Addr().String())
			t.Logf("google-auth %s", out.Version)
			if out.Project != testProject || out.Email != email || out.Universe != UniverseDomain {
				t.Errorf("project %q email %q universe %q", out.Project, out.Email, out.Universe)
			}
			if out.Token != testToken+"/"+DefaultScope {
				t.Errorf("token %q", out.Token)
			}
			if left := time.Until(out.Expiry); left < 59*time.Minute || left > time.Hour {
				t.Errorf("token expiry in %v, want about an hour", left)
			}
			// Python asks for the token under the email it read, so the
			// email path must map onto the same Request as default/.
			want := []broker.Request{{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}}
			if fed {
				// A federated principal has no identity tokens: the 404
				// reaches the application as an error naming the cause.
				if !strings.Contains(out.IDError, "NoGoogleServiceAccount") {
					t.Errorf("identity token for a federated pod: %q", out.IDError)
				}
			} else {
				if !strings.HasPrefix(out.IDToken, "eyJ") || !strings.HasPrefix(out.FetchedID, "eyJ") || out.IDError != "" {
					t.Errorf("identity tokens %q, %q, %s", out.IDToken, out.FetchedID, out.IDError)
				}
				if left := time.Until(out.IDExpiry); left < 59*time.Minute || left > time.Hour {
					t.Errorf("identity token expiry in %v (read from its exp claim)", left)
				}
				want = append(want,
					broker.Request{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "https://svc.example"},
					broker.Request{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "https://aud2.example"})
			}
			if !slices.Equal(fb.reqs, want) {
				t.Errorf("requests %+v, want %+v", fb.reqs, want)
			}
		})
	}
}

// TestGcloud runs the Google Cloud CLI itself (GCE_METADATA_ROOT names the
// server): print-access-token reads the account, the listing and the
// universe, then asks for a token under the email path (and an identity
// token for its own OAuth client on the way); print-identity-token asks
// default/identity with format=standard&licenses=FALSE.
func TestGcloud(t *testing.T) {
	needGcloud(t)
	if testing.Short() {
		t.Skip("gcloud takes seconds to start")
	}
	ts, fb := serveReal(t, nil)
	hp := ts.Listener.Addr().String()
	gcloud := func(args ...string) string {
		t.Helper()
		out := surfacetest.RunClient(t, "gcloud "+strings.Join(args, " "), 60*time.Second, clientEnv(t, hp, "GCE_METADATA_ROOT="+hp), "gcloud", args...)
		return strings.TrimSpace(string(out))
	}
	if got := gcloud("auth", "print-access-token"); got != testToken+"/"+DefaultScope {
		t.Errorf("print-access-token: %q", got)
	}
	if got := gcloud("auth", "print-identity-token", "--audiences=https://svc.example"); !strings.HasPrefix(got, "eyJ") {
		t.Errorf("print-identity-token: %q", got)
	}
	var sawToken, sawID bool
	for _, r := range fb.reqs {
		sawToken = sawToken || r == broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}
		sawID = sawID || r == broker.Request{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "https://svc.example"}
	}
	if !sawToken || !sawID {
		t.Errorf("requests %+v", fb.reqs)
	}
}
