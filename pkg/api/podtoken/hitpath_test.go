package podtoken

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// TestLiteralAudienceIsParseQuerys: where literalAudience answers, it
// answers as url.ParseQuery does.
func TestLiteralAudienceIsParseQuerys(t *testing.T) {
	for _, raw := range []string{
		"", "audience=a", "audience=", "audience", "audience=a&audience=b", "x=1&audience=a&y",
		"&&audience=a&", "audience=a=b", "Audience=a", "audiences=a", "audience=https://svc/x?y",
		"audience=a%20b", "audience=a+b", "audience=a;b", "a%75dience=x", "audience=%zz",
	} {
		first, n, ok := literalAudience(raw)
		if !ok {
			continue
		}
		q, _ := url.ParseQuery(raw)
		if first != q.Get("audience") || n != len(q["audience"]) {
			t.Errorf("literalAudience(%q) = %q, %d; url.ParseQuery gives %q, %d", raw, first, n, q.Get("audience"), len(q["audience"]))
		}
	}
	for _, raw := range []string{"audience=a%20b", "audience=a+b", "audience=a;b"} {
		if _, _, ok := literalAudience(raw); ok {
			t.Errorf("literalAudience(%q) answered for an escaped query", raw)
		}
	}
}

// TestAnswerIsJSONMarshals: the JSON answer is byte for byte what
// json.Marshal makes of it, escapes included.
func TestAnswerIsJSONMarshals(t *testing.T) {
	exp := time.Date(2026, 12, 2, 2, 0, 0, 500, time.FixedZone("x", 3600))
	for _, tok := range []string{"eyJ.pod-token.sig", `odd<&>"\token`, "é\u2028"} {
		h := New(hit{&exchange.Credentials{Kind: exchange.KindIDToken, IDToken: exchange.Secret(tok), Expiration: exp}})
		rec := get(h, Path+"?audience=svc", "")
		want, _ := json.Marshal(answer{Token: tok, Expiration: exp.UTC().Truncate(time.Second).Format(time.RFC3339)})
		if rec.Code != 200 || rec.Body.String() != string(want) {
			t.Errorf("answer %d %s, want %s", rec.Code, rec.Body, want)
		}
		if ct, cc := rec.Header().Get("Content-Type"), rec.Header().Get("Cache-Control"); ct != "application/json" || cc != "no-store" {
			t.Errorf("Content-Type %q, Cache-Control %q", ct, cc)
		}
	}
}

type hit struct{ c *exchange.Credentials }

func (h hit) Credentials(context.Context, netip.Addr, broker.Request) (broker.Answer, error) {
	return broker.Answer{Credentials: h.c}, nil
}
func (hit) LogFailure(context.Context, netip.Addr, podresolve.Pod, broker.Failure, error) {}
func (hit) ObserveRequest(int, time.Duration)                                             {}

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

func TestCacheHitAllocatesNothing(t *testing.T) {
	h := New(hit{&exchange.Credentials{Kind: exchange.KindIDToken, IDToken: "eyJ.pod-token.sig", Expiration: time.Now().Add(time.Hour)}})
	for _, accept := range []string{"", "text/plain", "application/json;q=0.9, text/plain"} {
		req := httptest.NewRequest(http.MethodGet, Path+"?audience=https://svc.example.com/orders", nil)
		req.RemoteAddr = "10.0.0.1:40000"
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		w := &discardWriter{h: http.Header{}}
		if n := testing.AllocsPerRun(200, func() { clear(w.h); h.ServeHTTP(w, req) }); n != 0 {
			t.Errorf("Accept %q: %.1f allocations per answer, want none", accept, n)
		}
	}
}
