package gcp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/gcp"
)

// Defect (issue 18, item 6): --session-duration above an hour was sent as
// the generateAccessToken lifetime, which Google refuses without the
// organisation policy, and the refusal read as a problem of the identity.
// A refusal of the lifetime now says so, by Google's field violation or by
// what was asked; other refusals keep pointing at the identity.
func TestLifetimeRefusalNamesTheLifetime(t *testing.T) {
	lifetimeViolation := `{"error":{"code":400,"message":"x","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"lifetime","description":"x"}]}]}}`
	for _, tc := range []struct {
		name   string
		d      time.Duration
		status int
		body   string
		kind   exchange.ErrorKind
		cause  exchange.Cause
	}{
		{"2h refused as invalid", 2 * time.Hour, 400, googleErr(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), exchange.InvalidRequest, exchange.CauseLifetime},
		{"2h refused as out of range", 2 * time.Hour, 400, googleErr(400, "OUT_OF_RANGE", "x"), exchange.InvalidRequest, exchange.CauseLifetime},
		{"1h, Google names the lifetime field", time.Hour, 400, lifetimeViolation, exchange.InvalidRequest, exchange.CauseLifetime},
		{"1h refused as invalid: not the lifetime", time.Hour, 400, googleErr(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), exchange.InvalidRequest, exchange.CauseIdentity},
		{"2h denied: the identity", 2 * time.Hour, 403, googleErr(403, "PERMISSION_DENIED", "denied"), exchange.Denied, exchange.CauseIdentity},
		{"2h unavailable: nobody's fault", 2 * time.Hour, 503, googleErr(503, "UNAVAILABLE", "x"), exchange.Transient, exchange.CauseIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			p.set("generateAccessToken", reply{tc.status, tc.body, false})
			req := accessReq(email)
			req.Duration = tc.d
			_, err := newExchanger(t, p, nil).Exchange(context.Background(), req)
			xe := asError(t, err)
			if xe.Kind != tc.kind || xe.Cause != tc.cause {
				t.Fatalf("error %v: kind %v cause %v, want %v %v", err, xe.Kind, xe.Cause, tc.kind, tc.cause)
			}
			if tc.cause == exchange.CauseLifetime {
				for _, want := range []string{tc.d.String(), "--gcp-token-lifetime", "iam.allowServiceAccountCredentialLifetimeExtension", email} {
					if !strings.Contains(xe.Hint, want) {
						t.Errorf("hint %q does not name %q", xe.Hint, want)
					}
				}
			} else if xe.Hint != "" {
				t.Errorf("hint %q on a refusal that is not the lifetime's", xe.Hint)
			}
			assertNoSecret(t, err)
		})
	}
}

// A lifetime the exchanger cannot ask for is refused before any call, as
// the lifetime's fault; a Role that is not an email, as the identity's
// form, with nothing sent.
func TestLocalRefusalsSayWhat(t *testing.T) {
	p := newPeer(t)
	x := newExchanger(t, p, nil)
	req := accessReq(email)
	req.Duration = 13 * time.Hour
	if xe := asError(t, exchangeErr(x, req)); xe.Kind != exchange.InvalidRequest || xe.Cause != exchange.CauseLifetime {
		t.Errorf("13h: kind %v cause %v, want invalid_request lifetime", xe.Kind, xe.Cause)
	}
	req = accessReq("arn:aws:iam::123456789012:role/x")
	if xe := asError(t, exchangeErr(x, req)); xe.Kind != exchange.InvalidRequest || xe.Cause != exchange.CauseIdentityForm || !strings.Contains(xe.Hint, "not a Google service account email") {
		t.Errorf("an ARN as Role: kind %v cause %v hint %q", xe.Kind, xe.Cause, xe.Hint)
	}
	if n := len(p.received()); n != 0 {
		t.Errorf("%d calls for requests refused locally", n)
	}
}

func exchangeErr(x *gcp.Exchanger, req exchange.Request) error {
	_, err := x.Exchange(context.Background(), req)
	return err
}

// Issue 18, item 11, on Google: STS refusing the token's audience (an
// allowed-audiences list on the provider without the agent's audience) is
// the audience's fault, not the identity's.
func TestAudienceRefusalNamesTheAudience(t *testing.T) {
	for _, tc := range []struct {
		desc     string
		audience bool
	}{
		{"The audience in ID Token [//iam.googleapis.com/" + provider + "] does not match the expected audience.", true},
		{"ID Token issued at 1 is stale to sign-in.", false},
	} {
		p := newPeer(t)
		p.set("sts", reply{400, oauthErr("invalid_grant", tc.desc), false})
		_, err := newExchanger(t, p, nil).Exchange(context.Background(), accessReq(email))
		xe := asError(t, err)
		if xe.Kind != exchange.InvalidToken || (xe.Cause == exchange.CauseAudience) != tc.audience {
			t.Errorf("%q: kind %v cause %v, want invalid_token, audience %v", tc.desc, xe.Kind, xe.Cause, tc.audience)
		}
		if tc.audience && (!strings.Contains(xe.Hint, "//iam.googleapis.com/"+provider) || !strings.Contains(xe.Hint, "allowed-audiences")) {
			t.Errorf("hint %q", xe.Hint)
		}
		assertNoSecret(t, err)
	}
}
