package aws_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
)

// Issue 18, item 6, on AWS: a --session-duration above the role's
// MaxSessionDuration is refused by STS with ValidationError; the pod is
// told LifetimeRefused naming --session-duration, not to check the
// identity annotation. Other validation errors still point at the role.
func TestSessionDurationRefusalNamesTheLifetime(t *testing.T) {
	for _, tc := range []struct {
		name     string
		msg      string
		lifetime bool
	}{
		{"above the role's maximum", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.", true},
		{"out of range", "1 validation error detected: Value '50000' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to 43200", true},
		{"another parameter", "1 validation error detected: Value at 'roleArn' failed to satisfy constraint", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSTS(t, 400, errorXML("Sender", "ValidationError", tc.msg))
			s := newSTS(t, aws.Config{Endpoint: f.srv.URL, Duration: 2 * time.Hour})
			_, err := s.Exchange(context.Background(), request())
			xe := assertExchangeError(t, err, exchange.InvalidRequest, "ValidationError")
			if got := xe.Cause == exchange.CauseLifetime; got != tc.lifetime {
				t.Fatalf("cause %v, want lifetime %v", xe.Cause, tc.lifetime)
			}
			fl := broker.Classify(err)
			if tc.lifetime {
				if fl.Code != broker.CodeLifetimeRefused || !strings.Contains(fl.Message, "2h0m0s") || !strings.Contains(fl.Message, "--session-duration") ||
					strings.Contains(fl.Message, "check the identity annotation") {
					t.Errorf("pod told %s %q", fl.Code, fl.Message)
				}
			} else if fl.Code != broker.CodeInvalidRole || !strings.Contains(fl.Message, "check the identity annotation") {
				t.Errorf("pod told %s %q", fl.Code, fl.Message)
			}
		})
	}
	// A duration the exchanger cannot ask for is the lifetime's fault too.
	s := newSTS(t, aws.Config{Endpoint: "http://127.0.0.1:1"})
	req := request()
	req.Duration = 13 * time.Hour
	_, err := s.Exchange(context.Background(), req)
	if xe := assertExchangeError(t, err, exchange.InvalidRequest, ""); xe.Cause != exchange.CauseLifetime {
		t.Errorf("13h: cause %v, want lifetime", xe.Cause)
	}
}
