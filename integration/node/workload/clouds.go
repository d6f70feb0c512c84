package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"cloud.google.com/go/compute/metadata"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/oauth2/google"

	"github.com/credbroker/agent/integration/node/workload/lines"
)

var credentialVars = []string{
	"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
	"GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT",
	"IDENTITY_ENDPOINT", "IDENTITY_HEADER",
}

// runClouds asks each cloud's SDK for credentials through its default
// chain, as an application that was never told about the agent would,
// prints one JSON line, and then stays up until SIGTERM, failed or not (a
// Deployment's container that exits is restarted, and its log with it).
func runClouds(list, azureResource string) {
	res := lines.Clouds{Clouds: true, Env: []string{}}
	for _, v := range credentialVars {
		if _, ok := os.LookupEnv(v); ok {
			res.Env = append(res.Env, v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	failed := false
	for _, c := range strings.Split(list, ",") {
		var s lines.CloudStep
		var err error
		switch c {
		case "aws":
			s, err = awsIdentity(ctx)
			res.AWS = &s
		case "gcp":
			s, err = gcpIdentity(ctx)
			res.GCP = &s
		case "azure":
			s, err = azureIdentity(ctx, azureResource)
			res.Azure = &s
		default:
			fmt.Fprintf(os.Stderr, "workload: unknown cloud %q\n", c)
			os.Exit(2)
		}
		if err != nil {
			failed = true
			s.Error = err.Error() // s is this round's: res points at it
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if failed {
		fmt.Fprintln(os.Stderr, "workload: a cloud failed; staying up so that the log can be read")
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
}

// awsIdentity: the SDK's default chain (the container provider, from
// AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN),
// then STS GetCallerIdentity signed with what it got.
func awsIdentity(ctx context.Context) (lines.CloudStep, error) {
	var s lines.CloudStep
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return s, fmt.Errorf("loading config: %w", err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return s, fmt.Errorf("retrieving credentials: %w", err)
	}
	s.AccessKeyID = creds.AccessKeyID
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return s, fmt.Errorf("GetCallerIdentity: %w", err)
	}
	s.Identity = aws.ToString(out.Arn)
	return s, nil
}

// gcpIdentity: cloud.google.com/go/compute/metadata for the account's
// email, then golang.org/x/oauth2/google's default credentials for an
// access token (the metadata server's, from GCE_METADATA_HOST).
func gcpIdentity(ctx context.Context) (lines.CloudStep, error) {
	var s lines.CloudStep
	email, err := metadata.EmailWithContext(ctx, "default")
	if err != nil {
		return s, fmt.Errorf("metadata email: %w", err)
	}
	s.Identity = email
	creds, err := google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/cloud-platform")
	if err != nil {
		return s, fmt.Errorf("default credentials: %w", err)
	}
	tok, err := creds.TokenSource.Token()
	if err != nil {
		return s, fmt.Errorf("token: %w", err)
	}
	s.Token = tok.AccessToken
	return s, nil
}

// azureIdentity: azidentity's DefaultAzureCredential, which picks the
// managed identity of IDENTITY_ENDPOINT and IDENTITY_HEADER.
func azureIdentity(ctx context.Context, resource string) (lines.CloudStep, error) {
	var s lines.CloudStep
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return s, fmt.Errorf("DefaultAzureCredential: %w", err)
	}
	tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{resource + "/.default"}})
	if err != nil {
		return s, fmt.Errorf("GetToken: %w", err)
	}
	s.Token = tok.Token
	return s, nil
}
