package aws_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
)

// Defect (issue 18, item 10): a role in an S3-compatible STS's own form
// (MinIO's arn:minio:iam:::role/ID) was refused by the agent itself, and
// the pod was told "the identity provider rejected the request", though no
// provider was asked. The operator names the extra partitions; a refusal
// says what is wrong and that nothing was sent.
func TestExtraARNPartitions(t *testing.T) {
	const minioRole = "arn:minio:iam:::role/dummy-internal-id"
	for _, tc := range []struct {
		name  string
		extra []string
		role  string
		sent  bool
		hint  string // in the refusal's hint, when not sent
	}{
		{"MinIO role, not configured", nil, minioRole, false, "--sts-extra-arn-partitions"},
		{"MinIO role, minio configured", []string{"minio"}, minioRole, true, ""},
		{"MinIO role with an account, minio configured", []string{"minio"}, "arn:minio:iam::anything:role/x", true, ""},
		{"AWS role, minio configured", []string{"minio"}, testRole, true, ""},
		{"other partition, minio configured", []string{"minio"}, "arn:ceph:iam:::role/x", false, "--sts-extra-arn-partitions"},
		{"MinIO ARN without resource", []string{"minio"}, "arn:minio:iam:::", false, "not a role ARN"},
		{"AWS role with 11 digits, minio configured", []string{"minio"}, "arn:aws:iam::12345678901:role/x", false, "12-digit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSTS(t, http.StatusOK, successXML("", "2026-11-27T07:00:52Z"))
			s := newSTS(t, aws.Config{Endpoint: f.srv.URL, ExtraPartitions: tc.extra})
			req := request()
			req.Role = tc.role
			c, err := s.Exchange(context.Background(), req)
			if got := len(f.requests()) == 1; got != tc.sent {
				t.Fatalf("sent to the STS: %v, want %v (err %v)", got, tc.sent, err)
			}
			if tc.sent {
				if err != nil {
					t.Fatal(err)
				}
				if strings.HasPrefix(tc.role, "arn:minio") && c.AccountID != "" {
					t.Errorf("account %q for a MinIO role", c.AccountID)
				}
				return
			}
			xe := assertExchangeError(t, err, exchange.InvalidRequest, "")
			if xe.Cause != exchange.CauseIdentityForm || !strings.Contains(xe.Hint, tc.hint) || !strings.Contains(xe.Hint, tc.role) {
				t.Errorf("cause %v hint %q, want identity_form naming the role and %q", xe.Cause, xe.Hint, tc.hint)
			}
			fl := broker.Classify(err)
			if fl.Code != broker.CodeInvalidRole || !strings.Contains(fl.Message, "no provider was asked") ||
				strings.Contains(fl.Message, "the identity provider rejected") || !strings.Contains(fl.Message, tc.hint) {
				t.Errorf("pod told %s %q", fl.Code, fl.Message)
			}
		})
	}
}

func TestExtraPartitionNamesAreChecked(t *testing.T) {
	for _, p := range []string{"aws", "aws-cn", "MinIO", "", "a:b", strings.Repeat("x", 33)} {
		if _, err := aws.New(aws.Config{Endpoint: "http://127.0.0.1:9000", ExtraPartitions: []string{p}}); err == nil {
			t.Errorf("extra partition %q accepted", p)
		}
	}
	if _, err := aws.New(aws.Config{Endpoint: "http://127.0.0.1:9000", ExtraPartitions: []string{"minio", "ceph"}}); err != nil {
		t.Error(err)
	}
}
