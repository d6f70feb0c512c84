package floor

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestBodyHasExactSizeAndTheAgentsShape(t *testing.T) {
	for _, size := range []int{200, 1187, 4096} {
		b, err := Body(size)
		if err != nil {
			t.Fatalf("Body(%d): %v", size, err)
		}
		if len(b) != size {
			t.Errorf("Body(%d) is %d bytes", size, len(b))
		}
		var doc map[string]string
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("Body(%d) is not JSON of strings: %v", size, err)
		}
		for _, k := range []string{"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"} {
			if doc[k] == "" {
				t.Errorf("Body(%d) lacks %s", size, k)
			}
		}
	}
	if _, err := Body(10); err == nil {
		t.Error("Body(10) succeeded; no credentials document is that small")
	}
}

func TestHandlerServesBodyAsJSON(t *testing.T) {
	body, err := Body(500)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	Handler(body).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/credentials", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" || rec.Body.String() != string(body) {
		t.Errorf("got %d %q %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
}
