package exchange

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultHTTPClient is the client exchangers use unless configured with
// one: 3 s to connect and shake hands, 10 s per request, keep-alive, and
// the proxy from the environment (HTTPS_PROXY, NO_PROXY). Token services
// answer in well under a second and the broker serves cached credentials
// while a call is outstanding, so a hung connection must fail soon enough
// to be retried with backoff; exchangers never retry themselves.
func DefaultHTTPClient() *http.Client {
	const connect, request = 3 * time.Second, 10 * time.Second
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	return &http.Client{
		Timeout: request,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dialer.DialContext,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   connect,
			MaxIdleConns:          16,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
	}
}

// SendFailure names why a request got no answer, from the innermost
// network error, leaving out the URL the caller knows.
func SendFailure(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}

// Leaks reports whether s holds any of secrets, whole or any dot-separated
// part of 16 bytes or more (a JWT's payload or signature alone is enough
// to be a leak): an upstream error text that does is withheld.
func Leaks(s string, secrets ...Secret) bool {
	for _, sec := range secrets {
		t := sec.Reveal()
		if t == "" {
			continue
		}
		if strings.Contains(s, t) {
			return true
		}
		for part := range strings.SplitSeq(t, ".") {
			if len(part) >= 16 && strings.Contains(s, part) {
				return true
			}
		}
	}
	return false
}

// TokenAudiences reads the aud claim of a JWT without verifying it, for
// error texts only: the audience is no secret (the token as a whole is).
// A token that is not a JWT, or an audience that does not look like one
// (over 256 bytes, not printable ASCII, or quoting a part of the token),
// gives nothing.
func TokenAudiences(token Secret) []string {
	parts := strings.Split(token.Reveal(), ".")
	if len(parts) != 3 {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil
	}
	var claims struct {
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(payload, &claims) != nil || len(claims.Aud) == 0 {
		return nil
	}
	var auds []string
	if err := json.Unmarshal(claims.Aud, &auds); err != nil {
		var one string
		if json.Unmarshal(claims.Aud, &one) != nil {
			return nil
		}
		auds = []string{one}
	}
	var out []string
	for _, a := range auds {
		if len(a) == 0 || len(a) > 256 || !printable(a) || Leaks(a, token) {
			continue
		}
		out = append(out, a)
		if len(out) == 4 {
			break
		}
	}
	return out
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\' {
			return false
		}
	}
	return true
}

// KindForStatus classifies a failed answer by its HTTP status alone, for
// when the upstream named no error code the exchanger knows: the statuses
// in known mean what the upstream documents them to mean; any other 4xx
// is InvalidRequest (the same request would fail again) and anything else
// (5xx, a redirect, an unparsable 2xx, no answer) is Transient. Every
// exchanger shares this fallback so that an unknown failure is retried or
// not by one rule.
func KindForStatus(status int, known map[int]ErrorKind) ErrorKind {
	if k, ok := known[status]; ok {
		return k
	}
	if status >= 400 && status < 500 {
		return InvalidRequest
	}
	return Transient
}

// AppendDetails appends ": part" to b for every part that is not empty:
// the tail of the exchangers' call errors (the upstream's code, a hint,
// its message), each of which a failure may lack.
func AppendDetails(b *strings.Builder, parts ...string) {
	for _, p := range parts {
		if p != "" {
			b.WriteString(": ")
			b.WriteString(p)
		}
	}
}
