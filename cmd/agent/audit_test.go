package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestAuditFlags(t *testing.T) {
	c, err := parseAuditFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.output != "table" || c.failOn != "low" || c.pageSize != 500 || c.audit.AllowedRoles != nil ||
		c.audit.AgentNamespace != "credbroker-system" || c.audit.AgentDaemonSet != "credbroker-agent" {
		t.Errorf("defaults: %+v", c)
	}
	// Given, even empty, the patterns replace the DaemonSet's.
	c, err = parseAuditFlags([]string{"--allowed-role-arn=", "-n", "team", "-o", "json", "--fail-on=high"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.audit.AllowedRoles == nil || len(c.audit.AllowedRoles) != 0 || c.audit.Namespace != "team" || c.output != "json" || c.failOn != "high" {
		t.Errorf("parsed: %+v", c)
	}
	c, _ = parseAuditFlags([]string{"--allowed-role-arn=arn:a:*,arn:b:*", "--allowed-role-arn", "arn:c:*"}, io.Discard)
	if !slices.Equal(c.audit.AllowedRoles, []string{"arn:a:*", "arn:b:*", "arn:c:*"}) {
		t.Errorf("allowed roles %q", c.audit.AllowedRoles)
	}
	for _, bad := range [][]string{{"-o", "yaml"}, {"--fail-on=critical"}, {"--page-size=0"}, {"extra"}} {
		if _, err := parseAuditFlags(bad, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
}

// The audit's exit codes are its own: 2 for usage and errors, 0 for help.
func TestAuditExitCodes(t *testing.T) {
	var stderr bytes.Buffer
	if got := run([]string{"audit", "-o", "yaml"}, io.Discard, &stderr); got != 2 {
		t.Errorf("bad flag: exit %d, want 2", got)
	}
	if got := run([]string{"audit", "-h"}, io.Discard, &stderr); got != 0 || !strings.Contains(stderr.String(), "--fail-on") {
		t.Errorf("-h: exit %d; %s", got, stderr.String())
	}
	stderr.Reset()
	t.Setenv("KUBECONFIG", t.TempDir()+"/missing")
	if got := runAudit(context.Background(), []string{"--kubeconfig", t.TempDir() + "/missing"}, io.Discard, &stderr); got != 2 {
		t.Errorf("missing kubeconfig: exit %d, want 2; %s", got, stderr.String())
	}
}
