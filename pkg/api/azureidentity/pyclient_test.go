package azureidentity

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// debianPython is the interpreter Debian's python3-azure installs for; a
// python3 earlier on PATH (pyenv) does not see it.
const debianPython = "/usr/bin/python3"

// needAzurePython returns an interpreter that imports azure.identity. It
// skips when there is none, except on CI, where the machine must have it
// (.ci/run installs python3-azure).
func needAzurePython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{debianPython, "python3"} {
		if exec.Command(py, "-c", "import azure.identity").Run() == nil {
			return py
		}
	}
	testfake.Unavailable(t, "no python3 imports azure.identity (apt-get install python3-azure)")
	return ""
}

// pyScript does what an application does with azure-identity in a pod
// that sets IDENTITY_ENDPOINT and IDENTITY_HEADER: ManagedIdentityCredential
// without and with a client ID, DefaultAzureCredential, and a client ID
// its ServiceAccount does not name. argv: resource, own client ID, other
// client ID.
const pyScript = `
import json, sys, time
import azure.identity
from azure.identity import ManagedIdentityCredential, DefaultAzureCredential
res, own, other = sys.argv[1], sys.argv[2], sys.argv[3]
out = {"version": azure.identity.__version__}
def get(name, cred, scope):
    try:
        t = cred.get_token(scope)
        out[name] = {"token": t.token, "expires_on": t.expires_on}
    except Exception as e:
        out[name] = {"error": "%s: %s" % (type(e).__name__, e)}
mi = ManagedIdentityCredential()
get("mi", mi, res + "/.default")
get("mi_again", mi, res + "/.default")
get("mi_client", ManagedIdentityCredential(client_id=own), res + "2/.default")
get("dac", DefaultAzureCredential(exclude_shared_token_cache_credential=True), res + "3/.default")
get("other", ManagedIdentityCredential(client_id=other), res + "4/.default")
print(json.dumps(out))
`

type pyToken struct {
	Token     string `json:"token"`
	ExpiresOn int64  `json:"expires_on"`
	Error     string `json:"error"`
}

func runPython(t *testing.T, py string, env []string, args ...string) map[string]json.RawMessage {
	t.Helper()
	var out map[string]json.RawMessage
	surfacetest.RunJSONClient(t, &out, "python azure-identity", 90*time.Second, env, py, append([]string{"-c", pyScript}, args...)...)
	return out
}

// clientEnv is the whole environment of a client process in a pod opted in
// to the agent: no proxy, no Azure configuration, empty home.
func clientEnv(t *testing.T, endpoint, header string) []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"AZURE_CONFIG_DIR=" + t.TempDir(),
		"IDENTITY_ENDPOINT=" + endpoint,
		"IDENTITY_HEADER=" + header,
	}
}

// sdkToken is what an SDK client script got for one of its credentials:
// a token and its expiry, or the error instead.
type sdkToken struct {
	Token   string
	Expires time.Time
	Error   string
}

// checkSDKTokens checks what an SDK client script (Node or Python) got for
// the resource res, tok reading its answer by name: under each name of
// want, the fake broker's token for that resource, valid for an hour;
// under "other" (another client ID), the broker's refusal with its code and
// message, which it returns. The script's first request met a 503
// (failFirst) and was retried, so the broker saw res twice.
func checkSDKTokens(t *testing.T, fb *fakeBroker, res string, want map[string]string, tok func(name string) sdkToken) sdkToken {
	t.Helper()
	for name, r := range want {
		p := tok(name)
		if p.Error != "" || p.Token != testToken+"/"+r {
			t.Errorf("%s: %+v", name, p)
			continue
		}
		if left := time.Until(p.Expires); left < 59*time.Minute || left > time.Hour {
			t.Errorf("%s: expires in %v", name, left)
		}
	}
	// A refusal reaches the application with the broker's code and message.
	other := tok("other")
	if !strings.Contains(other.Error, broker.CodeIdentityNotAllowed) || !strings.Contains(other.Error, errRefused.Message) {
		t.Errorf("another client ID: %+v", other)
	}
	req := func(id, scope string) broker.Request {
		return broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Identity: id, Scope: scope}
	}
	reqs := []broker.Request{req("", res), req("", res), req(testClientID, res+"2"), req("", res+"3"), req(otherClient, res+"4")}
	if !slices.Equal(fb.reqs, reqs) {
		t.Errorf("requests %+v,\nwant %+v", fb.reqs, reqs)
	}
	return other
}

func TestPythonAzureIdentity(t *testing.T) {
	py := needAzurePython(t)
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	ts, fb := serveReal(t, func(fb *fakeBroker, _ *Config) { fb.failFirst = 1 })
	res := "https://vault.azure.net"
	out := runPython(t, py, clientEnv(t, ts.URL+TokenPath, testHeader), res, testClientID, otherClient)
	var version string
	_ = json.Unmarshal(out["version"], &version)
	t.Logf("azure-identity %s (%s)", version, py)
	// mi_again (the same credential) is answered from azure-identity's
	// cache, which it keys by the answer's "resource": that field must be
	// the resource as the client asked.
	checkSDKTokens(t, fb, res, map[string]string{"mi": res, "mi_again": res, "mi_client": res + "2", "dac": res + "3"}, func(name string) sdkToken {
		var p pyToken
		if err := json.Unmarshal(out[name], &p); err != nil {
			t.Fatalf("%s: %s: %v", name, out[name], err)
		}
		return sdkToken{Token: p.Token, Expires: time.Unix(p.ExpiresOn, 0), Error: p.Error}
	})
}

// TestPythonWrongIdentityHeader: a wrong IDENTITY_HEADER is a 401 that
// names the header, and the broker is never asked.
func TestPythonWrongIdentityHeader(t *testing.T) {
	py := needAzurePython(t)
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	ts, fb := serveReal(t, nil)
	out := runPython(t, py, clientEnv(t, ts.URL+TokenPath, "wrong"), "https://vault.azure.net", testClientID, otherClient)
	var p pyToken
	_ = json.Unmarshal(out["mi"], &p)
	if !strings.Contains(p.Error, "X-IDENTITY-HEADER") || !strings.Contains(p.Error, CodeUnauthorized) {
		t.Errorf("wrong header: %+v", p)
	}
	if fb.calls() != 0 {
		t.Errorf("broker asked %d times", fb.calls())
	}
}

// TestPythonIMDSForm: azure-identity pointed at the agent as IMDS
// (AZURE_POD_IDENTITY_AUTHORITY_HOST, no IDENTITY_ENDPOINT) gets its
// tokens from the IMDS form; the first request meets a 503 and is retried
// (a 400 would have made it give up on the endpoint for good).
func TestPythonIMDSForm(t *testing.T) {
	py := needAzurePython(t)
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	ts, fb := serveReal(t, func(fb *fakeBroker, _ *Config) { fb.failFirst = 1 })
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"AZURE_CONFIG_DIR=" + t.TempDir(),
		"AZURE_POD_IDENTITY_AUTHORITY_HOST=" + ts.URL,
	}
	res := "https://vault.azure.net"
	out := runPython(t, py, env, res, testClientID, otherClient)
	for name, r := range map[string]string{"mi": res, "mi_again": res, "mi_client": res + "2"} {
		var p pyToken
		_ = json.Unmarshal(out[name], &p)
		if p.Error != "" || p.Token != testToken+"/"+r {
			t.Errorf("%s: %+v", name, p)
			continue
		}
		if left := time.Until(time.Unix(p.ExpiresOn, 0)); left < 59*time.Minute || left > time.Hour {
			t.Errorf("%s: expires in %v", name, left)
		}
	}
	var p pyToken
	_ = json.Unmarshal(out["other"], &p)
	if p.Token != "" || !strings.Contains(p.Error, broker.CodeIdentityNotAllowed) {
		t.Errorf("another client ID: %+v", p)
	}
	t.Logf("a refusal through the IMDS form as the application sees it: %s", p.Error)
	fb.mu.Lock()
	defer fb.mu.Unlock()
	want := broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: res}
	if len(fb.reqs) < 2 || fb.reqs[0] != want || fb.reqs[1] != want {
		t.Errorf("requests %+v", fb.reqs)
	}
}
