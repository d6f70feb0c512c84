// Command callerid asks STS who the caller is, with credentials from
// aws-sdk-go-v2's default configuration chain, and prints the
// GetCallerIdentity result as JSON, like `aws sts get-caller-identity`.
//
// The integration tests run it inside a simulated pod with only
// AWS_CONTAINER_CREDENTIALS_FULL_URI (plus region and endpoint) set and an
// empty HOME, so the node agent is the only possible source of credentials.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "callerid:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return fmt.Errorf("loading default config: %w", err)
	}
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return fmt.Errorf("GetCallerIdentity: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]string{
		"UserId":  aws.ToString(out.UserId),
		"Account": aws.ToString(out.Account),
		"Arn":     aws.ToString(out.Arn),
	})
}
