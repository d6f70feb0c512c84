package azure_test

import (
	"context"
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
