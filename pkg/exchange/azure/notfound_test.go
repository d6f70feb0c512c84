package azure_test

import (
	"context"
	"strings"
	"testing"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// Defect (issue 18, item 9): AADSTS700016 (application not found) was
// answered 400, after which Python azure-identity marks the endpoint
// unusable for good, though Entra also answers it while a newly created
// application replicates. It is a denial: retryable through the broker's
// window (TestDeniedRetryWindowIsPerCloud), then a 403, never a 400.
func TestApplicationNotFoundIsADenialNeverA400(t *testing.T) {
	p := newPeer(t)
	p.set(reply{status: 400, body: entraErr("unauthorized_client", 700016,
		"AADSTS700016: Application with identifier '"+clientID+"' was not found in the directory '"+tenant+"'.")})
	_, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
	xe := asError(t, err)
	if xe.Kind != exchange.Denied {
		t.Fatalf("kind %v, want denied (retried in the window, then final)", xe.Kind)
	}
	if f := broker.Classify(err); f.Class == broker.Invalid {
		t.Errorf("classified %+v: a 400 on the managed-identity surface", f)
	}
}

// Issue 18, item 11: AADSTS700212 (no federated credential has the
// token's audience) is the audience's fault, by Entra's code: the pod is
// told AudienceRefused naming --azure-audience, not its client ID.
func TestAudienceRefusalByCode(t *testing.T) {
	p := newPeer(t)
	p.set(reply{status: 400, body: entraErr("invalid_client", 700212, "AADSTS700212: No matching federated identity record found for presented assertion audience 'x'.")})
	_, err := newExchanger(t, p, nil).Exchange(context.Background(), req(resource))
	xe := asError(t, err)
	if xe.Kind != exchange.Denied || xe.Cause != exchange.CauseAudience {
		t.Fatalf("kind %v cause %v, want denied audience", xe.Kind, xe.Cause)
	}
	if f := broker.Classify(err); f.Code != broker.CodeAudienceRefused || !strings.Contains(f.Message, "--azure-audience") {
		t.Errorf("pod told %s %q", f.Code, f.Message)
	}
}
