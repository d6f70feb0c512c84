package podtoken

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
)

// The profile's own check, without a broker: a reserved audience is
// refused under any spelling even where the prefix and the
// ServiceAccount's patterns cover it, and a service audience is allowed.
func TestProfileRefusesReservedAudiences(t *testing.T) {
	p, err := Profile(Config{Prefix: "https://", Annotation: "credbroker.io/token-audiences", Reserved: reserved})
	if err != nil {
		t.Fatal(err)
	}
	for _, aud := range []string{"https://iam.googleapis.com" + strings.TrimPrefix(gcpAudience, "//iam.googleapis.com"),
		"https://sts.amazonaws.com", "HTTPS://kubernetes.default.svc.cluster.local/"} {
		var r *exchange.Refusal
		if err := p.Check("ns", "sa", "https://*", aud); !errors.As(err, &r) || r.Code != exchange.CodeAudienceNotAllowed ||
			!strings.Contains(r.Message, "never handed out") {
			t.Errorf("%q: %v, want a reserved-audience refusal", aud, err)
		}
	}
	if err := p.Check("ns", "sa", "https://*", "https://svc.example.com/orders"); err != nil {
		t.Errorf("a service audience: %v", err)
	}
	var r *exchange.Refusal
	if err := p.Check("ns", "sa", "", "https://svc.example.com/orders"); !errors.As(err, &r) || r.Code != exchange.CodeNoIdentity {
		t.Errorf("no annotation: %v", err)
	}
	if _, err := Profile(Config{Annotation: "a"}); err == nil {
		t.Error("a profile without a prefix was accepted")
	}
}

// The exchanger hands back the pod-bound token itself, expiring with it.
func TestExchangerReturnsTheToken(t *testing.T) {
	exp := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c, err := Exchanger{}.Exchange(context.Background(), exchange.Request{Token: "tok", TokenExpiration: exp, Want: exchange.KindIDToken})
	if err != nil || c.Kind != exchange.KindIDToken || c.IDToken != "tok" || !c.Expiration.Equal(exp) || !c.Complete() {
		t.Errorf("%+v, %v", c, err)
	}
	if _, err := (Exchanger{}).Exchange(context.Background(), exchange.Request{Token: "tok"}); err == nil {
		t.Error("a token without expiry was handed out")
	}
}
