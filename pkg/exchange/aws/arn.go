package aws

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/arn"
)

// ErrMalformedARN is returned (wrapped) by AccountIDFromARN.
var ErrMalformedARN = errors.New("malformed AWS ARN")

// AccountIDFromARN returns the 12-digit account ID of an AWS ARN in any
// partition (aws, aws-cn, aws-us-gov, the isolated ones):
// arn:aws:iam::123456789012:role/x yields 123456789012. It fails, with an
// error wrapping ErrMalformedARN, for anything that is not an ARN with a
// 12-digit account, including ARNs of global resources that have no account.
func AccountIDFromARN(s string) (string, error) {
	a, err := parseARN(s)
	if err != nil {
		return "", err
	}
	return a.AccountID, nil
}

func parseARN(s string) (arn.ARN, error) {
	return parseRoleARN(s, nil)
}

// ErrOtherPartition is returned (wrapped, with ErrMalformedARN) for a
// well-formed ARN of a partition that is neither AWS's nor one of the
// configured extra ones.
var ErrOtherPartition = errors.New("not an AWS partition")

// partitionRE is what an extra partition may be named: MinIO's "minio",
// say.
var partitionRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// ValidPartition reports whether p can name an extra ARN partition.
func ValidPartition(p string) bool { return partitionRE.MatchString(p) }

// parseRoleARN parses an ARN of an AWS partition (aws, aws-*), which must
// carry a 12-digit account, or of one of extra, whose account may be
// empty or anything (MinIO's roles are arn:minio:iam:::role/ID); the
// service and the resource are required either way.
func parseRoleARN(s string, extra []string) (arn.ARN, error) {
	a, err := arn.Parse(s)
	if err != nil {
		return arn.ARN{}, fmt.Errorf("%w: %v", ErrMalformedARN, err)
	}
	if slices.Contains(extra, a.Partition) {
		if a.Service == "" || a.Resource == "" {
			return arn.ARN{}, fmt.Errorf("%w: service or resource missing", ErrMalformedARN)
		}
		return a, nil
	}
	if a.Partition != "aws" && !strings.HasPrefix(a.Partition, "aws-") {
		return arn.ARN{}, fmt.Errorf("%w: partition %q is %w", ErrMalformedARN, a.Partition, ErrOtherPartition)
	}
	if a.Service == "" || a.Resource == "" {
		return arn.ARN{}, fmt.Errorf("%w: service or resource missing", ErrMalformedARN)
	}
	if !isAccountID(a.AccountID) {
		return arn.ARN{}, fmt.Errorf("%w: account %q is not 12 digits", ErrMalformedARN, a.AccountID)
	}
	return a, nil
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
