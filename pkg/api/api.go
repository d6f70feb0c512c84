// Package api routes credential requests to the wire surfaces, one
// subpackage each (awscreds, gcemetadata, azureidentity, podtoken). Each
// surface owns its paths (its Owns function), its headers, error format,
// class → status table, request metrics and guard rules; this package only
// chooses which one answers.
package api

import "net/http"

// Route is one surface as the router sees it: the paths it owns and its
// handler (with its request guard in front). A nil Owns owns every path no
// other route owns, so that every request is answered in some surface's
// format whatever order the routes come in.
type Route struct {
	Owns    func(path string) bool
	Handler http.Handler
}

// Router sends each request to the first route that owns its path, and
// the rest to the route with a nil Owns (the last of them, if several).
func Router(routes ...Route) http.Handler {
	var owners []Route
	fallback := http.Handler(http.NotFoundHandler())
	for _, rt := range routes {
		if rt.Owns == nil {
			fallback = rt.Handler
		} else {
			owners = append(owners, rt)
		}
	}
	if len(owners) == 0 {
		return fallback
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		for _, rt := range owners {
			if rt.Owns(p) {
				rt.Handler.ServeHTTP(w, r)
				return
			}
		}
		fallback.ServeHTTP(w, r)
	})
}
