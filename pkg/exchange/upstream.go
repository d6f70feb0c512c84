package exchange

import (
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
