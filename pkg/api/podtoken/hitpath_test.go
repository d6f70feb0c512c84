package podtoken

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// TestAudienceIsParseQuerys: the allocation-free reading of the query
// answers as url.ParseQuery does.
func TestAudienceIsParseQuerys(t *testing.T) {
	for _, raw := range []string{
		"", "audience=a", "audience=", "audience", "audience=a&audience=b", "x=1&audience=a&y",
		"&&audience=a&", "audience=a=b", "Audience=a", "audiences=a", "audience=https://svc/x?y",
		"audience=a%20b", "audience=a+b", "audience=a;b", "a%75dience=x", "audience=%zz",
	} {
		first, n := audience(&http.Request{URL: &url.URL{RawQuery: raw}})
		q, _ := url.ParseQuery(raw)
		if first != q.Get("audience") || n != len(q["audience"]) {
			t.Errorf("audience(%q) = %q, %d; url.ParseQuery gives %q, %d", raw, first, n, q.Get("audience"), len(q["audience"]))
		}
	}
}

// TestAnswerIsJSONMarshals: the JSON answer is byte for byte what
// json.Marshal makes of it, escapes included.
func TestAnswerIsJSONMarshals(t *testing.T) {
	exp := time.Date(2026, 12, 2, 2, 0, 0, 500, time.FixedZone("x", 3600))
	for _, tok := range []string{"eyJ.pod-token.sig", `odd<&>"\token`, "é\u2028"} {
		h, err := New(hit{&exchange.Credentials{Kind: exchange.KindIDToken, IDToken: exchange.Secret(tok), Expiration: exp}}, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
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

func (h hit) Serve(context.Context, netip.Addr, broker.Request) (broker.Answer, *broker.Failure) {
	return broker.Answer{Credentials: h.c}, nil
}
