package podtoken

import (
	"strings"
	"testing"
)

const (
	gcpAudience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov"
	apiAudience = "https://kubernetes.default.svc.cluster.local"
)

var reserved = []Reserved{
	{Audience: "sts.amazonaws.com", Owner: "the aws exchange's"},
	{Audience: gcpAudience, Owner: "the gcp exchange's"},
	{Audience: "api://AzureADTokenExchange", Owner: "the azure exchange's"},
	{Audience: apiAudience, Owner: "the Kubernetes API server's"},
}

func TestSameAudience(t *testing.T) {
	gcpPath := strings.TrimPrefix(gcpAudience, "//iam.googleapis.com")
	for _, c := range []struct {
		a, b string
		same bool
	}{
		// Google STS takes the provider's name with or without https:.
		{gcpAudience, "https://iam.googleapis.com" + gcpPath, true},
		{gcpAudience, "HTTPS://IAM.GoogleAPIs.com" + gcpPath + "/", true},
		{gcpAudience, "http://iam.googleapis.com" + gcpPath + "//", true},
		{gcpAudience, "https://iam.googleapis.com:443" + gcpPath, true},
		{gcpAudience, "//iam.googleapis.com." + gcpPath, true},
		{gcpAudience, "iam.googleapis.com" + gcpPath, true},
		{gcpAudience, "https://iam.googleapis.com" + strings.ToUpper(gcpPath), false}, // a path is case-sensitive
		{gcpAudience, "https://iam.googleapis.com/projects/124/locations/global/workloadIdentityPools/pool/providers/prov", false},
		{gcpAudience, "https://iam.googleapis.com:8443" + gcpPath, false},
		{"sts.amazonaws.com", "https://sts.amazonaws.com/", true},
		{"sts.amazonaws.com", "STS.amazonaws.com", true},
		{"sts.amazonaws.com", "sts.amazonaws.com.evil", false},
		{"api://AzureADTokenExchange", "API://azureadtokenexchange/", true},
		{"api://AzureADTokenExchange", "https://AzureADTokenExchange", false},
		{apiAudience, apiAudience + "/", true},
		{apiAudience, apiAudience + "/api", false},
	} {
		if got := SameAudience(c.a, c.b); got != c.same {
			t.Errorf("SameAudience(%q, %q) = %v, want %v", c.a, c.b, got, c.same)
		}
	}
}

// A prefix under which a cloud or the API server would accept a token is
// refused, under whatever spelling it covers the audience.
func TestCheckPrefix(t *testing.T) {
	for _, p := range []string{
		"https://", "HTTPS://", "//", "http://", "h", "s", "sts.", "https://sts",
		"https://iam.googleapis.com/", "https://IAM.googleapis.com/projects/123/", "//iam.googleapis.com/projects/",
		"https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov/",
		"api://", "API://azure",
		"https://kubernetes.default.svc", "https://kubernetes.default.svc.cluster.local/",
	} {
		err := CheckPrefix(p, reserved)
		if err == nil {
			t.Errorf("prefix %q accepted", p)
			continue
		}
		if !strings.Contains(err.Error(), "--token-audience-prefix") || !strings.Contains(err.Error(), "covers") {
			t.Errorf("prefix %q: %v, want an error naming the flag and what it covers", p, err)
		}
	}
	for _, p := range []string{
		"", "https://svc.example.com/", "svc-", "https://iam.googleapis.com/projects/124/",
		"https://kubernetes.default.svc.cluster.local/services/", "spiffe://",
	} {
		if err := CheckPrefix(p, reserved); err != nil {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
	err := CheckPrefix("https://kubernetes", reserved)
	if err == nil || !strings.Contains(err.Error(), apiAudience) || !strings.Contains(err.Error(), "API server") {
		t.Errorf("the API server's audience: %v", err)
	}
}
