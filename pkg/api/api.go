// Package api routes credential requests to the wire surfaces, one
// subpackage each (awscreds, gcemetadata, azureidentity, podtoken). Each
// surface owns its paths (its Owns function), its headers, error format,
// class → status table, request metrics and guard rules; this package only
// chooses which one answers.
package api

import "net/http"

// Route is one surface as the router sees it: the paths it owns and its
// handler (with its request guard in front).
type Route struct {
	Owns    func(path string) bool
	Handler http.Handler
}

// Router sends each request to the first route that owns its path; the
// last route should own every path, so that every request is answered in
// some surface's format.
func Router(routes ...Route) http.Handler {
	if len(routes) == 1 {
		return routes[0].Handler
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		for _, rt := range routes {
			if rt.Owns(p) {
				rt.Handler.ServeHTTP(w, r)
				return
			}
		}
		http.NotFound(w, r)
	})
}
