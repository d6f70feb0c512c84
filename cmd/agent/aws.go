package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/api"
	"github.com/credbroker/agent/pkg/api/awscreds"
	"github.com/credbroker/agent/pkg/broker"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
)

// awsConfig holds AWS's flags. AWS is always on: it is the surface every
// pod reaches at the container-credentials address.
type awsConfig struct {
	stsRegion   string
	stsEndpoint string
	// stsPartitions are ARN partitions of an S3-compatible STS's roles.
	stsPartitions   listFlag
	allowedRoles    listFlag
	audience        string
	roleAnnotation  string
	sessionDuration time.Duration
}

func (a *awsConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&a.stsRegion, "sts-region", firstEnv("AWS_REGION", "AWS_DEFAULT_REGION"), "STS region, for its regional endpoint (default $AWS_REGION)")
	fs.StringVar(&a.stsEndpoint, "sts-endpoint", "", "STS endpoint URL overriding the regional one")
	fs.Var(&a.stsPartitions, "sts-extra-arn-partitions", "ARN partitions accepted in role annotations besides AWS's, for an S3-compatible STS at --sts-endpoint (minio: arn:minio:iam:::role/ID); repeatable")
	fs.DurationVar(&a.sessionDuration, "session-duration", awsexchange.DefaultSessionDuration, "lifetime of the credentials requested from STS (at least 30m)")
	fs.StringVar(&a.audience, "audience", awsexchange.DefaultAudience, "audience of the ServiceAccount token exchanged at AWS STS")
	fs.StringVar(&a.roleAnnotation, "role-annotation", awsexchange.DefaultAnnotation, "ServiceAccount annotation naming the role")
	fs.Var(&a.allowedRoles, "allowed-role-arn", "glob pattern of role ARNs that may be assumed ('*' matches any characters); repeatable; empty allows all")
}

func (a *awsConfig) enabled() bool { return true }

func (a *awsConfig) validate() error {
	switch {
	case a.stsRegion == "" && a.stsEndpoint == "":
		return errors.New("--sts-region (or $AWS_REGION) or --sts-endpoint is required")
	case len(a.stsPartitions) > 0 && a.stsEndpoint == "":
		return errors.New("--sts-extra-arn-partitions needs --sts-endpoint: AWS's own STS knows only AWS partitions")
	case a.sessionDuration < broker.MinLifetime:
		return fmt.Errorf("--session-duration %s leaves no room to refresh before the %s freshness floor; use at least %s", a.sessionDuration, broker.FreshnessFloor, broker.MinLifetime)
	}
	return nil
}

// cloud describes AWS to the broker, with an STS exchanger asking for
// --session-duration.
func (a *awsConfig) cloud() (broker.Cloud, error) {
	sts, err := awsexchange.New(awsexchange.Config{Region: a.stsRegion, Endpoint: a.stsEndpoint, Duration: a.sessionDuration,
		ExtraPartitions: a.stsPartitions})
	if err != nil {
		return broker.Cloud{}, err
	}
	return awsexchange.Profile(awsexchange.ProfileConfig{Exchanger: sts, Audience: a.audience, Annotation: a.roleAnnotation,
		AllowedRoles: a.allowedRoles, Lifetime: a.sessionDuration}), nil
}

func (a *awsConfig) build(context.Context, *rest.Config, []broker.Cloud) (broker.Cloud, error) {
	return a.cloud()
}

// route is the container-credentials surface, which answers every path no
// other surface owns.
func (a *awsConfig) route(b tracedBroker, grd *guards) (api.Route, error) {
	h, err := awscreds.New(b, grd.reg)
	if err != nil {
		return api.Route{}, fmt.Errorf("AWS surface: %w", err)
	}
	return grd.route(awscreds.Owns, grd.awsRules(), h)
}
