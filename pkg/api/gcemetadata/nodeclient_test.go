package gcemetadata

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// jsGCP is the Node.js client project (package.json and a committed lock;
// `npm ci` there installs google-auth-library and gcp-metadata).
var jsGCP = filepath.Join("..", "..", "..", "integration", "sdk", "js-gcp")

func TestNodeGoogleAuthLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("starting the client takes seconds")
	}
	if _, err := os.Stat(filepath.Join(jsGCP, "node_modules", "google-auth-library")); err != nil {
		testfake.Unavailable(t, "integration/sdk/js-gcp's node_modules (npm ci there): %v", err)
	}
	for _, fed := range []bool{false, true} {
		name, email := "annotated", testEmail
		if fed {
			name, email = "federated", testProject+FederatedSuffix
		}
		t.Run(name, func(t *testing.T) {
			ts, fb := serveReal(t, func(fb *fakeBroker, _ *Config) { fb.federated = fed })
			var out struct {
				Library, GcpMetadata, Client, Token, ProjectID, Email, Universe, IDToken, IDError string
				Expiry                                                                            int64
			}
			surfacetest.RunJSONClient(t, &out, "node", 60*time.Second, clientEnv(t, ts.Listener.Addr().String()),
				"node", filepath.Join(jsGCP, "gcp-auth.mjs"), "https://svc.example")
			t.Logf("google-auth-library %s, gcp-metadata %s, %s", out.Library, out.GcpMetadata, out.Client)
			if out.Client != "Compute" || out.Token != testToken+"/"+DefaultScope || out.ProjectID != testProject ||
				out.Email != email || out.Universe != UniverseDomain {
				t.Errorf("got %+v", out)
			}
			switch {
			case fed && !strings.Contains(out.IDError, "NoGoogleServiceAccount"):
				t.Errorf("identity token for a federated pod: %q", out.IDError)
			case !fed && (!strings.HasPrefix(out.IDToken, "eyJ") || out.IDError != ""):
				t.Errorf("identity token %q, %s", out.IDToken, out.IDError)
			}
			if left := time.Until(time.UnixMilli(out.Expiry)); left < 59*time.Minute || left > time.Hour {
				t.Errorf("token expiry in %v", left)
			}
			want := []broker.Request{{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: DefaultScope}}
			if !fed {
				want = append(want, broker.Request{Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: "https://svc.example"})
			}
			for _, w := range want {
				if !slices.Contains(fb.reqs, w) {
					t.Errorf("requests %+v lack %+v", fb.reqs, w)
				}
			}
		})
	}
}
