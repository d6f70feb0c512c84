// Package wire holds the small pieces every wire surface (pkg/api/*) needs
// on its hot path: allocation-free JSON strings and query lookups, input
// checks, Retry-After values.
package wire

import (
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// AppendJSONString appends s as a JSON string. Keys and tokens are base64
// or URL-safe and need no escaping, so they are copied as they are;
// anything else is escaped as encoding/json would.
func AppendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if !plain[s[i]] {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// plain[c] says whether byte c goes into a JSON string as it is: printable
// ASCII but for the quote, the backslash and the characters encoding/json
// escapes for HTML. One load per byte of a session token, where seven
// comparisons were the largest share of rendering an answer.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = true
	}
	for _, c := range `"\<>&` {
		t[c] = false
	}
	return t
}()

// AppendRFC3339Seconds appends t in UTC as RFC 3339 with whole seconds,
// truncated (never rounded up: a credential must not look longer-lived
// than it is), and a literal Z, as
// t.UTC().Truncate(time.Second).AppendFormat(b, "2006-01-02T15:04:05Z")
// does, without interpreting a layout on every answer.
func AppendRFC3339Seconds(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 1 || year > 9999 {
		return t.Truncate(time.Second).AppendFormat(b, "2006-01-02T15:04:05Z")
	}
	hour, minute, sec := t.Clock()
	b = append(b, byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-')
	b = append2(b, int(month), '-')
	b = append2(b, day, 'T')
	b = append2(b, hour, ':')
	b = append2(b, minute, ':')
	return append2(b, sec, 'Z')
}

// append2 appends n (0-99) in two digits, then sep.
func append2(b []byte, n int, sep byte) []byte {
	return append(b, byte('0'+n/10), byte('0'+n%10), sep)
}

// RetryAfterSeconds renders d as a Retry-After value: whole seconds,
// rounded up, at least 1.
func RetryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(int64((d+time.Second-1)/time.Second), 1), 10)
}

// Printable reports whether s is printable ASCII without spaces.
func Printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// QueryValue returns the raw (still escaped) value of the first key=value
// pair named key in the raw query q, without allocating.
func QueryValue(q, key string) (string, bool) {
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}

// Unescape decodes a query value, allocating only when it is escaped.
func Unescape(v string) (string, error) {
	if !strings.ContainsAny(v, "%+") {
		return v, nil
	}
	return url.QueryUnescape(v)
}
