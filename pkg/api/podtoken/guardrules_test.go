package podtoken

import (
	"testing"

	"github.com/credbroker/agent/pkg/api/internal/surfacetest"
)

// The guard in front of the surface writes its refusals in this surface's
// {"code","message"} JSON, and never asks for Authorization: callers of
// /v1/token are told to send no header.
func TestGuardRules(t *testing.T) {
	r := GuardRules()
	if r.RequireAuthorization {
		t.Fatal("the pod-token surface requires Authorization")
	}
	w, body := surfacetest.Throttled(t, r.WriteError)
	if len(body) != 2 || body["code"] != "Throttled" || body["message"] != "slow down" || w.Header().Get("Retry-After") != "2" {
		t.Errorf("headers %v body %q", w.Header(), w.Body)
	}
}
