package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The webhook learns which clouds are on, and their annotations, from the
// agent's own flags: the same names with the same defaults, so one set of
// chart values (or one argument list) configures both.
func TestWebhookSharesTheAgentsFlags(t *testing.T) {
	defaults := func(parse func([]string, io.Writer) error) map[string]string {
		var buf bytes.Buffer
		if err := parse([]string{"-h"}, &buf); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("-h: %v", err)
		}
		out := map[string]string{}
		for _, entry := range regexp.MustCompile(`(?m)^  -`).Split(buf.String(), -1)[1:] {
			name, _, _ := strings.Cut(strings.Fields(entry)[0], " ")
			def := ""
			if m := regexp.MustCompile(`\(default (.*)\)\s*$`).FindStringSubmatch(entry); m != nil {
				def = m[1]
			}
			out[name] = def
		}
		return out
	}
	web := defaults(func(a []string, w io.Writer) error { _, err := parseWebhookFlags(a, w); return err })
	srv := defaults(func(a []string, w io.Writer) error { _, err := parseServeFlags(a, w); return err })
	for _, name := range []string{"role-annotation", "allow-default-service-account", "gcp-workload-identity-provider",
		"gcp-service-account-annotation", "azure-tenant-id", "azure-identity-header", "azure-client-id-annotation"} {
		w, ok1 := web[name]
		s, ok2 := srv[name]
		if !ok1 || !ok2 || w != s {
			t.Errorf("--%s: webhook default %q (%v), agent default %q (%v)", name, w, ok1, s, ok2)
		}
	}
	if web["role-annotation"] != `"eks.amazonaws.com/role-arn"` {
		t.Errorf("parsed %q", web["role-annotation"])
	}
}

// Which clouds the webhook wires follows the agent's switches.
func TestWebhookClouds(t *testing.T) {
	base := []string{"--namespace=credbroker-system"}
	cases := []struct {
		args []string
		want []string
	}{
		{nil, []string{"aws"}},
		{[]string{"--gcp-workload-identity-provider=projects/123/locations/global/workloadIdentityPools/pool/providers/prov", "--gcp-project-id=proj"}, []string{"aws", "gcp"}},
		{[]string{"--azure-tenant-id=00000000-0000-0000-0000-000000000001", "--azure-identity-header=hdr"}, []string{"aws", "azure"}},
	}
	for _, tc := range cases {
		c, err := parseWebhookFlags(append(base, tc.args...), io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		var got []string
		for _, cl := range c.clouds() {
			got = append(got, cl.Name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v: clouds %v, want %v", tc.args, got, tc.want)
		}
	}
	if _, err := parseWebhookFlags(append(base, "--azure-tenant-id=00000000-0000-0000-0000-000000000001"), io.Discard); err == nil {
		t.Error("Azure without --azure-identity-header accepted: pods would get an empty IDENTITY_HEADER")
	}
}
