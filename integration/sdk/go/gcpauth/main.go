// Command gcpauth does what a Go application on GKE does for Google
// credentials: cloud.google.com/go/compute/metadata for the project, the
// account's email and an identity token, and golang.org/x/oauth2/google
// default credentials (FindDefaultCredentials) for an access token. It
// prints the results as one JSON object.
//
// The integration tests run it inside a simulated pod with only
// GCE_METADATA_HOST (and an empty HOME, no GOOGLE_APPLICATION_CREDENTIALS)
// set, so the node agent's GCE metadata surface is the only possible source
// of credentials.
//
// Usage: gcpauth [-audience AUD]: with -audience, also an identity token
// (idToken), or the error the library returned (idError).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2/google"
)

const scope = "https://www.googleapis.com/auth/cloud-platform"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gcpauth:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	audience := flag.String("audience", "", "also fetch an identity token for this audience")
	flag.Parse()
	if !metadata.OnGCEWithContext(ctx) {
		return fmt.Errorf("metadata.OnGCE is false")
	}
	project, err := metadata.ProjectIDWithContext(ctx)
	if err != nil {
		return fmt.Errorf("project ID: %w", err)
	}
	email, err := metadata.EmailWithContext(ctx, "default")
	if err != nil {
		return fmt.Errorf("email: %w", err)
	}
	creds, err := google.FindDefaultCredentials(ctx, scope)
	if err != nil {
		return fmt.Errorf("default credentials: %w", err)
	}
	tok, err := creds.TokenSource.Token()
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	out := map[string]any{
		"project":      project,
		"credsProject": creds.ProjectID,
		"email":        email,
		"token":        tok.AccessToken,
		"type":         tok.Type(),
		"expiry":       tok.Expiry.UTC().Format(time.RFC3339),
	}
	if *audience != "" {
		// A pod that is its own federated principal has no identity token:
		// report the error as an application would see it, go on.
		id, err := metadata.GetWithContext(ctx, "instance/service-accounts/default/identity?audience="+url.QueryEscape(*audience)+"&format=full")
		if err != nil {
			out["idError"] = err.Error()
		} else {
			out["idToken"] = id
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
