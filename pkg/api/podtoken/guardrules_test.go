package podtoken

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The guard in front of the surface writes its refusals in this surface's
// {"code","message"} JSON, and never asks for Authorization: callers of
// /v1/token are told to send no header.
func TestGuardRules(t *testing.T) {
	r := GuardRules()
	if r.RequireAuthorization {
		t.Fatal("the pod-token surface requires Authorization")
	}
	w := httptest.NewRecorder()
	if got := r.WriteError(w, http.StatusTooManyRequests, "Throttled", "slow down", 1500*time.Millisecond); got != 429 || w.Code != 429 {
		t.Fatalf("status %d / %d", got, w.Code)
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body) != 2 || body["code"] != "Throttled" || body["message"] != "slow down" ||
		w.Header().Get("Retry-After") != "2" {
		t.Errorf("headers %v body %q (%v)", w.Header(), w.Body, err)
	}
}
