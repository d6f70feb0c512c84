package azureidentity

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
)

// The guard in front of the surface writes its refusals with GuardRules'
// writer: this surface's {"error","error_description"} JSON, which
// azidentity and azure-identity read, and Retry-After on a 429. No Azure
// client sends Authorization, so the rules never ask for it.
func TestGuardRules(t *testing.T) {
	r := GuardRules()
	if r.RequireAuthorization {
		t.Fatal("the Azure surface requires Authorization, which no Azure client sends")
	}
	w, body := surfacetest.Throttled(t, r.WriteError)
	if body["error"] != "Throttled" || body["error_description"] != "slow down" ||
		w.Header().Get("Retry-After") != "2" || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Errorf("headers %v body %q", w.Header(), w.Body)
	}
	w = httptest.NewRecorder()
	r.WriteError(w, http.StatusBadRequest, "ForwardedRequest", "no", 0)
	if w.Header().Get("Retry-After") != "" || w.Code != 400 {
		t.Errorf("%d headers %v", w.Code, w.Header())
	}
}
