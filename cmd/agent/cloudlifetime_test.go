package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/exchange/azure"
	"github.com/credbroker/agent/pkg/exchange/gcp"
)

// Issue 18, item 6: --session-duration was GCP's lifetime too, so 2h
// broke every impersonation. GCP has its own flag, an hour by default,
// checked at start; a longer one is allowed (the organisation policy may
// permit it) with a warning. Item 8: each cloud's denied-retry window.
func TestEachCloudItsOwnLifetimeAndWindow(t *testing.T) {
	base := []string{"--node-name=n", "--sts-region=eu-west-1", "--session-duration=6h",
		"--gcp-workload-identity-provider=projects/123/locations/global/workloadIdentityPools/pool/providers/prov",
		"--gcp-project-id=proj", "--azure-tenant-id=contoso.onmicrosoft.com", "--azure-identity-header=h"}
	c := mustParse(t, base...)
	gc, err := c.gcp.cloud()
	if err != nil {
		t.Fatal(err)
	}
	if gc.Lifetime != time.Hour || gc.DeniedRetryWindow != gcp.DeniedRetryWindow || c.sessionDuration != 6*time.Hour {
		t.Errorf("GCP lifetime %s window %s with --session-duration 6h; want 1h and %s", gc.Lifetime, gc.DeniedRetryWindow, gcp.DeniedRetryWindow)
	}
	if w := c.gcp.lifetimeWarning(); w != "" {
		t.Errorf("warning %q for the default lifetime", w)
	}
	ac, err := c.azure.cloud()
	if err != nil {
		t.Fatal(err)
	}
	if ac.Lifetime != 0 || ac.DeniedRetryWindow != azure.DeniedRetryWindow {
		t.Errorf("Azure lifetime %s window %s; want none (Entra decides) and %s", ac.Lifetime, ac.DeniedRetryWindow, azure.DeniedRetryWindow)
	}

	c = mustParse(t, append(base, "--gcp-token-lifetime=4h")...)
	if w := c.gcp.lifetimeWarning(); !strings.Contains(w, "iam.allowServiceAccountCredentialLifetimeExtension") {
		t.Errorf("4h: warning %q, want one naming the organisation policy", w)
	}
	for _, bad := range []string{"20m", "13h"} {
		if _, err := parseServeFlags(append(base, "--gcp-token-lifetime="+bad), io.Discard); err == nil || !strings.Contains(err.Error(), "--gcp-token-lifetime") {
			t.Errorf("--gcp-token-lifetime=%s: %v, want refused at start", bad, err)
		}
	}
}
