package broker

import "sync/atomic"

// Format names one way a surface renders a cached answer (AWS's
// credentials JSON, a token as text). Surfaces make one per format with
// NewFormat and keep it for the process's life: formats are told apart by
// identity, never by name.
type Format struct{ name string }

// NewFormat returns a new, distinct Format; name is for debugging only.
func NewFormat(name string) *Format { return &Format{name: name} }

// Rendered holds one cached answer's wire body as a surface rendered it, so
// that later hits on the same cache entry write those bytes instead of
// rendering them again. It belongs to the cache entry: a refresh, an
// eviction or a change of identity replaces the entry and with it this
// value, so a body is only ever served with the credentials it was
// rendered from, to the pod they are cached for. Only a body that depends
// on nothing but the credentials may be kept here (not one that counts
// seconds until expiry, nor one that varies with the request beyond what
// the broker's Request holds).
type Rendered struct{ p atomic.Pointer[rendering] }

type rendering struct {
	f    *Format
	body []byte
	// length is len(body) as a Content-Length header value.
	length []string
}

// Load returns the body stored for f, and its length as a header value;
// nil if none was stored for f (or r is nil). The body is shared: never
// modify it.
func (r *Rendered) Load(f *Format) (body []byte, length []string) {
	if r == nil {
		return nil, nil
	}
	v := r.p.Load()
	if v == nil || v.f != f {
		return nil, nil
	}
	return v.body, v.length
}

// Store keeps body, which the caller must not modify afterwards, as the
// rendering of the answer in format f, unless one is kept already (the
// first rendering wins; concurrent hits render the same bytes). A nil r
// keeps nothing.
func (r *Rendered) Store(f *Format, body []byte, length []string) {
	if r == nil {
		return
	}
	r.p.CompareAndSwap(nil, &rendering{f: f, body: body, length: length})
}
