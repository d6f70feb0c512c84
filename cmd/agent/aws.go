package main

import (
	"errors"
	"flag"
	"time"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
)

// awsConfig holds AWS's flags. AWS is always on: it is the surface every
// pod reaches at the container-credentials address.
type awsConfig struct {
	stsRegion   string
	stsEndpoint string
	// stsPartitions are ARN partitions of an S3-compatible STS's roles.
	stsPartitions listFlag
	allowedRoles  listFlag
	aws           broker.Cloud // the AWS cloud's settings; cloud adds its exchanger
}

// register adds AWS's flags; --session-duration sets the broker's
// SessionDuration, the AWS credential lifetime.
func (a *awsConfig) register(fs *flag.FlagSet, sessionDuration *time.Duration) {
	fs.StringVar(&a.stsRegion, "sts-region", firstEnv("AWS_REGION", "AWS_DEFAULT_REGION"), "STS region, for its regional endpoint (default $AWS_REGION)")
	fs.StringVar(&a.stsEndpoint, "sts-endpoint", "", "STS endpoint URL overriding the regional one")
	fs.Var(&a.stsPartitions, "sts-extra-arn-partitions", "ARN partitions accepted in role annotations besides AWS's, for an S3-compatible STS at --sts-endpoint (minio: arn:minio:iam:::role/ID); repeatable")
	fs.DurationVar(sessionDuration, "session-duration", time.Hour, "lifetime of the credentials requested from STS (at least 30m)")
	fs.StringVar(&a.aws.Audience, "audience", "sts.amazonaws.com", "audience of the ServiceAccount token exchanged at AWS STS")
	fs.StringVar(&a.aws.Annotation, "role-annotation", "eks.amazonaws.com/role-arn", "ServiceAccount annotation naming the role")
	fs.Var(&a.allowedRoles, "allowed-role-arn", "glob pattern of role ARNs that may be assumed ('*' matches any characters); repeatable; empty allows all")
}

func (a *awsConfig) validate() error {
	a.aws.Name, a.aws.AllowedIdentities = exchange.AWS, a.allowedRoles
	switch {
	case a.stsRegion == "" && a.stsEndpoint == "":
		return errors.New("--sts-region (or $AWS_REGION) or --sts-endpoint is required")
	case len(a.stsPartitions) > 0 && a.stsEndpoint == "":
		return errors.New("--sts-extra-arn-partitions needs --sts-endpoint: AWS's own STS knows only AWS partitions")
	}
	return nil
}

// cloud builds the broker's AWS cloud: the flags' settings and an STS
// exchanger asking for sessionDuration.
func (a *awsConfig) cloud(sessionDuration time.Duration) (broker.Cloud, error) {
	sts, err := awsexchange.New(awsexchange.Config{Region: a.stsRegion, Endpoint: a.stsEndpoint, Duration: sessionDuration,
		ExtraPartitions: a.stsPartitions})
	if err != nil {
		return broker.Cloud{}, err
	}
	c := a.aws
	c.Exchanger = sts
	return c, nil
}
