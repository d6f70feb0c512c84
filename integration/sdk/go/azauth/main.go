// Command azauth does what a Go application in a pod does for Azure
// credentials with azidentity (over MSAL Go): ManagedIdentityCredential
// without and with a client ID, DefaultAzureCredential, and a
// ManagedIdentityCredential naming a client ID the pod's ServiceAccount
// does not name. It prints one JSON object with each step's token or the
// error the library returned, in the shape of
// integration/sdk/js-azure/azure-identity.mjs.
//
// The integration tests run it inside a simulated pod whose environment has
// nothing Azure but IDENTITY_ENDPOINT and IDENTITY_HEADER (the agent's
// managed-identity surface, App Service style).
//
// Usage: azauth RESOURCE OWN_CLIENT_ID OTHER_CLIENT_ID: the steps ask for
// RESOURCE, RESOURCE2, RESOURCE3 and RESOURCE4 (so that no step is answered
// from MSAL's process-wide cache of another).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// step is one credential's outcome.
type step struct {
	Token     string `json:"token,omitempty"`
	ExpiresOn int64  `json:"expiresOn,omitempty"` // Unix milliseconds, as JS reports it
	Error     string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: azauth RESOURCE OWN_CLIENT_ID OTHER_CLIENT_ID")
		os.Exit(2)
	}
	resource, own, other := os.Args[1], os.Args[2], os.Args[3]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	out := map[string]step{}
	get := func(name string, cred azcore.TokenCredential, err error, res string) {
		if err != nil {
			out[name] = step{Error: "constructing: " + err.Error()}
			return
		}
		tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{res + "/.default"}})
		if err != nil {
			out[name] = step{Error: err.Error()}
			return
		}
		out[name] = step{Token: tok.Token, ExpiresOn: tok.ExpiresOn.UnixMilli()}
	}
	mi, err := azidentity.NewManagedIdentityCredential(nil)
	get("mi", mi, err, resource)
	miOwn, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(own)})
	get("mi_client", miOwn, err, resource+"2")
	dac, err := azidentity.NewDefaultAzureCredential(nil)
	get("dac", dac, err, resource+"3")
	miOther, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(other)})
	get("other", miOther, err, resource+"4")
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "azauth:", err)
		os.Exit(1)
	}
}
