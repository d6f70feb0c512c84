package azureidentity

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/azure"
	"github.com/credbroker/agent/pkg/podresolve"
)

// The test in this file runs the surface over the real broker (policy,
// cache), with a fake Kubernetes API and a fake Entra exchanger, and asks
// with azidentity: issue 18 item 7, client IDs in another letter case.

const clientAnnotation = "azure.workload.identity/client-id"

// mixedClientID is a client ID with letters, as Entra shows them (lower
// case); the Azure portal and some tools print them in upper case.
const mixedClientID = "5b7c1a2e-3f4d-4e6a-9b8c-0d1e2f3a4b5c"

// entraExchanger stands for pkg/exchange/azure at its interface: a token
// naming the client ID and resource it was asked for.
type entraExchanger struct {
	mu    sync.Mutex
	roles []string
}

func (x *entraExchanger) Exchange(_ context.Context, req exchange.Request) (exchange.Credentials, error) {
	x.mu.Lock()
	x.roles = append(x.roles, req.Role)
	x.mu.Unlock()
	return exchange.Credentials{Kind: exchange.KindAccessToken, TokenType: "Bearer", Expiration: time.Now().Add(time.Hour),
		AccessToken: exchange.Secret(fmt.Sprintf("entra.%s|%s", req.Role, strings.Join(req.Scopes, "+")))}, nil
}

// A GUID is the same client ID in any letter case, for Entra and so for
// the agent: a pod whose ServiceAccount names its client ID in one case and
// whose code names it in another gets its token (before, a final 403), the
// operator's pattern matches in any case, and another client ID is still
// refused.
func TestGoClientIDInAnotherCase(t *testing.T) {
	client := fake.NewClientset()
	kubetest.IssueTokens(client, 10*time.Minute, func(*authenticationv1.TokenRequest) string { return "SATOKEN" })
	for name, id := range map[string]string{"lower": mixedClientID, "upper": strings.ToUpper(mixedClientID)} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: map[string]string{clientAnnotation: id}}}
		if _, err := client.CoreV1().ServiceAccounts("ns").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	x := &entraExchanger{}
	newBroker := func(sa string) *broker.Broker {
		b, err := broker.New(broker.Config{
			ServiceAccounts: kubetest.ServiceAccounts(client),
			Resolver:        testfake.OnePod{Pod: podresolve.Pod{Namespace: "ns", Name: sa + "-0", UID: types.UID("uid-" + sa), ServiceAccount: sa}},
			Clouds: []broker.Cloud{azure.Profile(azure.ProfileConfig{Exchanger: x, Audience: "api://AzureADTokenExchange", ClientAnnotation: clientAnnotation,
				Tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47", AllowedClientIDs: []string{"5B7C1A2E-*"}})},
		})
		if err != nil {
			t.Fatal(err)
		}
		kubetest.RunSynced(t, b)
		return b
	}

	for _, c := range []struct{ sa, asked string }{
		{"lower", strings.ToUpper(mixedClientID)},
		{"upper", mixedClientID},
		{"upper", strings.ToUpper(mixedClientID)},
	} {
		t.Run(c.sa+"/asked_"+c.asked[:8], func(t *testing.T) {
			h, err := New(Config{Broker: newBroker(c.sa), IdentityHeader: testHeader})
			if err != nil {
				t.Fatal(err)
			}
			ts := httptest.NewServer(h)
			t.Cleanup(ts.Close)
			setPodEnv(t, ts, testHeader)
			vault := uniqueResource("vault")
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
				ClientOptions: fastRetry, ID: azidentity.ClientID(c.asked)})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := cred.GetToken(ctxT(t), tokenFor(vault))
			if err != nil {
				t.Fatalf("client ID %s for a ServiceAccount naming it in another case: %v", c.asked, err)
			}
			// Upstream is asked for the client ID in its canonical (lower) case.
			if want := "entra." + mixedClientID + "|" + vault; tok.Token != want {
				t.Errorf("token %q, want %q", tok.Token, want)
			}
		})
	}

	t.Run("another client ID", func(t *testing.T) {
		h, err := New(Config{Broker: newBroker("lower"), IdentityHeader: testHeader})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(h)
		t.Cleanup(ts.Close)
		setPodEnv(t, ts, testHeader)
		cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
			ClientOptions: fastRetry, ID: azidentity.ClientID(strings.ToUpper("6b7c1a2e-3f4d-4e6a-9b8c-0d1e2f3a4b5c"))})
		if err != nil {
			t.Fatal(err)
		}
		_, err = cred.GetToken(ctxT(t), tokenFor(uniqueResource("vault")))
		if err == nil || !strings.Contains(err.Error(), broker.CodeIdentityNotAllowed) {
			t.Fatalf("another client ID: %v, want refused %s", err, broker.CodeIdentityNotAllowed)
		}
	})
}
