package broker

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
)

// TestCachedCredentialsAreTheExchangersStrings: the cache keeps a
// credential's strings in one allocation of its own (compact); what a cache
// hit serves must be, field for field, what the exchanger returned.
func TestCachedCredentialsAreTheExchangersStrings(t *testing.T) {
	e, _ := newEnvWithPod(t, "10.0.0.1")
	want := exchange.Credentials{
		Kind:            exchange.KindAWS,
		AccessKeyID:     "ASIAEXAMPLEEXAMPLE01",
		SecretAccessKey: "secret/with+slashes=",
		SessionToken:    exchange.Secret("token-" + string(make([]byte, 300))),
		AccountID:       "111122223333",
		TokenType:       "ignored-but-kept",
		Expiration:      t0.Add(time.Hour),
	}
	e.exchanger.setFn(func(exchange.Request) (exchange.Credentials, error) { return want, nil })
	addr := netip.MustParseAddr("10.0.0.1")
	for i := range 2 { // a fetch, then a cache hit
		ans, err := e.broker.Credentials(context.Background(), addr, awsRequest)
		if err != nil {
			t.Fatal(err)
		}
		got := *ans.Credentials
		if got.AccessKeyID != want.AccessKeyID || got.SecretAccessKey != want.SecretAccessKey ||
			got.SessionToken != want.SessionToken || got.AccountID != want.AccountID ||
			got.TokenType != want.TokenType || got.AccessToken != "" || got.IDToken != "" ||
			!got.Expiration.Equal(want.Expiration) || got.Kind != want.Kind {
			t.Errorf("request %d served %#v, want the exchanger's %#v", i, got, want)
		}
	}
	if n := e.exchanger.calls.Load(); n != 1 {
		t.Errorf("%d exchanges, want 1 (the second request a cache hit)", n)
	}
}

func TestCompact(t *testing.T) {
	c := exchange.Credentials{AccessKeyID: "a", SecretAccessKey: "bb", SessionToken: "", AccountID: "dddd",
		AccessToken: "eeeee", TokenType: "f", IDToken: "gg"}
	want := c
	compact(&c)
	if !reflect.DeepEqual(c, want) {
		t.Errorf("compact changed the credentials: %#v, want %#v", c, want)
	}
	var empty exchange.Credentials
	compact(&empty)
	if !reflect.DeepEqual(empty, exchange.Credentials{}) {
		t.Errorf("compact of nothing gave %#v", empty)
	}
}
