package main

import (
	"io"
	"slices"
	"strings"
	"testing"
)

// Issue 18, item 10: --sts-extra-arn-partitions lets role annotations name
// an S3-compatible STS's roles (MinIO's arn:minio:iam:::role/ID); it needs
// --sts-endpoint, since AWS's STS knows only AWS partitions.
func TestSTSExtraARNPartitionsFlag(t *testing.T) {
	base := []string{"--node-name=n", "--sts-extra-arn-partitions=minio"}
	if _, err := parseServeFlags(append(base, "--sts-region=eu-west-1"), io.Discard); err == nil || !strings.Contains(err.Error(), "--sts-endpoint") {
		t.Errorf("without --sts-endpoint: %v, want refused", err)
	}
	c := mustParse(t, append(base, "--sts-endpoint=http://127.0.0.1:9000", "--sts-extra-arn-partitions=ceph")...)
	if !slices.Equal(c.stsPartitions, listFlag{"minio", "ceph"}) {
		t.Errorf("partitions %q", c.stsPartitions)
	}
}
