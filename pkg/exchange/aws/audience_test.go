package aws_test

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
)

// Defect (issue 18, item 11): when the STS refused the token's audience
// (AWS: InvalidIdentityToken "Incorrect token audience"; MinIO: 400
// InvalidParameterValue "`azp` must match configured OpenID Client ID"),
// the pod was told to check the identity annotation or the role's trust
// policy. The cause is the agent's --audience, and the pod is told so.
func TestAudienceRefusalNamesTheAgentsAudience(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	token := exchange.Secret(enc([]byte(`{"alg":"RS256"}`)) + "." +
		enc([]byte(`{"aud":["sts.amazonaws.com"],"sub":"system:serviceaccount:app:web","iss":"https://oidc.example"}`)) + "." +
		enc([]byte("signature-that-must-never-leak-anywhere")))
	for _, tc := range []struct {
		name       string
		status     int
		body       string
		kind       exchange.ErrorKind
		code       string
		audience   bool
		failure    string
		notInFinal string
	}{
		{"AWS, wrong audience", 400, errorXML("Sender", "InvalidIdentityToken", "Incorrect token audience"),
			exchange.InvalidToken, "InvalidIdentityToken", true, broker.CodeAudienceRefused, "trust policy"},
		{"MinIO, azp", 400, errorXML("Sender", "InvalidParameterValue", "STS JWT Token has `azp` claim invalid, `azp` must match configured OpenID Client ID"),
			exchange.InvalidToken, "InvalidParameterValue", true, broker.CodeAudienceRefused, "check the identity annotation"},
		{"MinIO, aud", 400, errorXML("Sender", "InvalidParameterValue", "STS JWT Token has `aud` claim invalid, `aud` must match configured OpenID Client ID"),
			exchange.InvalidToken, "InvalidParameterValue", true, broker.CodeAudienceRefused, "check the identity annotation"},
		{"AWS, no OIDC provider: the identity's side", 400, errorXML("Sender", "InvalidIdentityToken", "No OpenIDConnect provider found in your account for https://oidc.example"),
			exchange.InvalidToken, "InvalidIdentityToken", false, broker.CodeUpstreamDenied, "--audience"},
		{"another bad parameter", 400, errorXML("Sender", "InvalidParameterValue", "nope"),
			exchange.InvalidRequest, "InvalidParameterValue", false, broker.CodeInvalidRole, "--audience"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSTS(t, tc.status, tc.body)
			s := newSTS(t, aws.Config{Endpoint: f.srv.URL})
			req := request()
			req.Token = token
			_, err := s.Exchange(context.Background(), req)
			xe := assertExchangeError(t, err, tc.kind, tc.code)
			if got := xe.Cause == exchange.CauseAudience; got != tc.audience {
				t.Fatalf("cause %v, want audience %v", xe.Cause, tc.audience)
			}
			if tc.audience && (!strings.Contains(xe.Hint, "sts.amazonaws.com") || !strings.Contains(xe.Hint, "--audience")) {
				t.Errorf("hint %q does not name the audience and --audience", xe.Hint)
			}
			// The agent's log line (the error text) says it too.
			if tc.audience != strings.Contains(err.Error(), "audience refused") || tc.audience != strings.Contains(err.Error(), "--audience") {
				t.Errorf("error text %q: want it to name the audience as the cause: %v", err, tc.audience)
			}
			fl := broker.Classify(err)
			if fl.Code != tc.failure || strings.Contains(fl.Message, tc.notInFinal) {
				t.Errorf("pod told %s %q; want code %s, not saying %q", fl.Code, fl.Message, tc.failure, tc.notInFinal)
			}
			for _, part := range strings.Split(token.Reveal(), ".") {
				if strings.Contains(fl.Message+xe.Hint, part) {
					t.Errorf("message quotes the token")
				}
			}
		})
	}
}
