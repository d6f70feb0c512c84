package wire

import (
	"sync"
	"sync/atomic"
)

// Values is a bounded set of query values seen before, so that a surface
// can turn a value it unescaped into a string without allocating: clients
// escape the same few resources and audiences on every request
// (url.Values escapes "https://" as "https%3A%2F%2F"). The zero value is
// empty; it is safe for concurrent use.
type Values struct {
	mu   sync.Mutex // serialises writers
	seen atomic.Pointer[map[string]string]
}

// maxValues bounds Values: past it, a new value costs one allocation per
// request, as it did before. A caller cannot grow the agent's memory with
// it.
const maxValues = 256

// Unescape decodes the raw query value v as url.QueryUnescape does. A value
// decoded before is returned without allocating.
func (vs *Values) Unescape(v string) (string, error) {
	var buf [512]byte
	b, ok := appendUnescaped(buf[:0], v)
	if !ok {
		// Malformed, or longer than buf: url's answer and error.
		return Unescape(v)
	}
	if m := vs.seen.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok {
			return s, nil
		}
	}
	s := string(b)
	vs.mu.Lock()
	defer vs.mu.Unlock()
	old := vs.seen.Load()
	if old == nil || len(*old) < maxValues {
		m := make(map[string]string, 1+lenOf(old))
		if old != nil {
			for k, v := range *old {
				m[k] = v
			}
		}
		m[s] = s
		vs.seen.Store(&m)
	}
	return s, nil
}

func lenOf(m *map[string]string) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// appendUnescaped appends v decoded as a query component ('+' is a space,
// %XX a byte) to dst. It reports false for a malformed escape or when the
// result would not fit dst's capacity.
func appendUnescaped(dst []byte, v string) ([]byte, bool) {
	for i := 0; i < len(v); i++ {
		if len(dst) == cap(dst) {
			return dst, false
		}
		switch c := v[i]; c {
		case '+':
			dst = append(dst, ' ')
		case '%':
			if i+2 >= len(v) || !isHex(v[i+1]) || !isHex(v[i+2]) {
				return dst, false
			}
			dst = append(dst, unhex(v[i+1])<<4|unhex(v[i+2]))
			i += 2
		default:
			dst = append(dst, c)
		}
	}
	return dst, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
