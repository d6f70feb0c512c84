package azureidentity

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
)

// jsAzure is the Node.js client project (package.json and a committed
// lock; `npm ci` there installs @azure/identity).
var jsAzure = filepath.Join("..", "..", "..", "integration", "sdk", "js-azure")

func needNodeAzure(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	_, errNode := exec.LookPath("node")
	_, errMod := os.Stat(filepath.Join(jsAzure, "node_modules", "@azure", "identity"))
	if errNode != nil || errMod != nil {
		testfake.Unavailable(t, "node or integration/sdk/js-azure's node_modules (npm ci there): %v, %v", errNode, errMod)
	}
}

type jsToken struct {
	Token     string `json:"token"`
	ExpiresOn int64  `json:"expiresOn"` // milliseconds
	Error     string `json:"error"`
}

func runNode(t *testing.T, env []string, args ...string) map[string]json.RawMessage {
	t.Helper()
	var out map[string]json.RawMessage
	surfacetest.RunJSONClient(t, &out, "node @azure/identity", 90*time.Second, env,
		"node", append([]string{filepath.Join(jsAzure, "azure-identity.mjs")}, args...)...)
	return out
}

func TestNodeAzureIdentity(t *testing.T) {
	needNodeAzure(t)
	ts, fb := serveReal(t, func(fb *fakeBroker, _ *Config) { fb.failFirst = 1 })
	res := "https://vault.azure.net"
	out := runNode(t, clientEnv(t, ts.URL+TokenPath, testHeader), res, testClientID, otherClient)
	var identity, msal string
	_ = json.Unmarshal(out["identity"], &identity)
	_ = json.Unmarshal(out["msalNode"], &msal)
	t.Logf("@azure/identity %s, @azure/msal-node %s", identity, msal)
	other := checkSDKTokens(t, fb, res, map[string]string{"mi": res, "mi_client": res + "2", "dac": res + "3"}, func(name string) sdkToken {
		var p jsToken
		if err := json.Unmarshal(out[name], &p); err != nil {
			t.Fatalf("%s: %s: %v", name, out[name], err)
		}
		return sdkToken{Token: p.Token, Expires: time.UnixMilli(p.ExpiresOn), Error: p.Error}
	})
	t.Logf("a refusal as the application sees it: %s", other.Error)
}

func TestNodeWrongIdentityHeader(t *testing.T) {
	needNodeAzure(t)
	ts, fb := serveReal(t, nil)
	out := runNode(t, clientEnv(t, ts.URL+TokenPath, "wrong"), "https://vault.azure.net", testClientID, otherClient)
	var p jsToken
	_ = json.Unmarshal(out["mi"], &p)
	if !strings.Contains(p.Error, "X-IDENTITY-HEADER") || p.Token != "" {
		t.Errorf("wrong header: %+v", p)
	}
	t.Logf("a wrong header as the application sees it: %s", p.Error)
	if fb.calls() != 0 {
		t.Errorf("broker asked %d times", fb.calls())
	}
}
