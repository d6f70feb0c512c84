package aws_test

import (
	"errors"
	"testing"

	"github.com/credbroker/agent/pkg/exchange/aws"
)

func TestAccountIDFromARN(t *testing.T) {
	tests := []struct {
		arn  string
		want string // empty: must fail
	}{
		{"arn:aws:iam::123456789012:role/x", "123456789012"},
		{"arn:aws:iam::123456789012:role/path/to/x", "123456789012"},
		{"arn:aws:sts::123456789012:assumed-role/x/ns.pod.0123456789", "123456789012"},
		{"arn:aws-cn:iam::210987654321:role/x", "210987654321"},
		{"arn:aws-us-gov:iam::000000000001:role/x", "000000000001"},
		{"arn:aws-iso-b:iam::123456789012:role/x", "123456789012"},
		{"arn:aws:s3:::bucket", ""},                                // no account
		{"arn:aws:iam::12345678901:role/x", ""},                    // 11 digits
		{"arn:aws:iam::1234567890123:role/x", ""},                  // 13 digits
		{"arn:aws:iam::12345678901a:role/x", ""},                   // not digits
		{"arn:aws:iam::123456789012:", ""},                         // no resource
		{"arn:aws::us-east-1:123456789012:role/x", ""},             // no service
		{"arn:gcp:iam::123456789012:role/x", ""},                   // not AWS
		{"arn::iam::123456789012:role/x", ""},                      // no partition
		{"arn:aws:iam::123456789012", ""},                          // too few sections
		{"role/x", ""},                                             // not an ARN
		{"", ""},                                                   // empty
		{"ARN:aws:iam::123456789012:role/x", ""},                   // prefix is case-sensitive
		{" arn:aws:iam::123456789012:role/x", ""},                  // leading space
		{"arn:aws:iam:: 123456789012:role/x", ""},                  // space in account
		{"arn:aws:iam::123456789012:role/x:extra", "123456789012"}, // resource may contain ':'
	}
	for _, tt := range tests {
		t.Run(tt.arn, func(t *testing.T) {
			got, err := aws.AccountIDFromARN(tt.arn)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("AccountIDFromARN(%q) = %q, want an error", tt.arn, got)
				}
				if !errors.Is(err, aws.ErrMalformedARN) {
					t.Errorf("error %v does not wrap ErrMalformedARN", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("AccountIDFromARN(%q) = %q, %v; want %q", tt.arn, got, err, tt.want)
			}
		})
	}
}
