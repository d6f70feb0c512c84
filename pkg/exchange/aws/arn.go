package aws

import (
	"errors"
	"fmt"
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
	a, err := arn.Parse(s)
	if err != nil {
		return arn.ARN{}, fmt.Errorf("%w: %v", ErrMalformedARN, err)
	}
	if a.Partition != "aws" && !strings.HasPrefix(a.Partition, "aws-") {
		return arn.ARN{}, fmt.Errorf("%w: partition %q is not an AWS partition", ErrMalformedARN, a.Partition)
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
