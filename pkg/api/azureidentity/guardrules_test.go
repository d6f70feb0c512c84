package azureidentity

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
	w := httptest.NewRecorder()
	if got := r.WriteError(w, http.StatusTooManyRequests, "Throttled", "slow down", 1500*time.Millisecond); got != 429 || w.Code != 429 {
		t.Fatalf("status %d / %d", got, w.Code)
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error"] != "Throttled" || body["error_description"] != "slow down" ||
		w.Header().Get("Retry-After") != "2" || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Errorf("headers %v body %q (%v)", w.Header(), w.Body, err)
	}
	w = httptest.NewRecorder()
	r.WriteError(w, http.StatusBadRequest, "ForwardedRequest", "no", 0)
	if w.Header().Get("Retry-After") != "" || w.Code != 400 {
		t.Errorf("%d headers %v", w.Code, w.Header())
	}
}
