package awscreds

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// --require-authorization reaches this surface's guard, and its refusals
// are this surface's error JSON.
func TestGuardRules(t *testing.T) {
	for _, on := range []bool{false, true} {
		if r := GuardRules(on); r.RequireAuthorization != on {
			t.Errorf("GuardRules(%v).RequireAuthorization = %v", on, r.RequireAuthorization)
		}
	}
	w := httptest.NewRecorder()
	GuardRules(true).WriteError(w, http.StatusUnauthorized, "MissingAuthorization", "set it", 0)
	if w.Code != 401 || w.Body.String() != `{"code":"MissingAuthorization","message":"set it","Code":"MissingAuthorization","Message":"set it"}` {
		t.Errorf("%d %q", w.Code, w.Body)
	}
}
