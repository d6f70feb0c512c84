package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRouterFirstOwnerAnswers: the first route owning a path answers it;
// the route with no Owns answers the rest, wherever it stands.
func TestRouterFirstOwnerAnswers(t *testing.T) {
	answer := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(name)) })
	}
	h := Router(
		Route{Handler: answer("aws")},
		Route{Owns: func(p string) bool { return strings.HasPrefix(p, "/computeMetadata") }, Handler: answer("gcp")},
		Route{Owns: func(p string) bool { return p == "/v1/token" }, Handler: answer("podtoken")},
	)
	for path, want := range map[string]string{
		"/computeMetadata/v1/": "gcp", "/v1/token": "podtoken", "/v1/token/": "aws", "/v1/credentials": "aws", "/": "aws",
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Body.String() != want {
			t.Errorf("%s: answered by %q, want %q", path, w.Body, want)
		}
	}
}
