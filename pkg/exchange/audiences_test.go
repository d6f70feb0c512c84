package exchange

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

func TestTokenAudiences(t *testing.T) {
	jwt := func(payload string) Secret {
		enc := base64.RawURLEncoding.EncodeToString
		return Secret(enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + "." + enc([]byte("a-signature-long-enough-to-be-a-secret")))
	}
	for name, tc := range map[string]struct {
		token Secret
		want  []string
	}{
		"array":          {jwt(`{"aud":["sts.amazonaws.com","minio"]}`), []string{"sts.amazonaws.com", "minio"}},
		"string":         {jwt(`{"aud":"api://AzureADTokenExchange"}`), []string{"api://AzureADTokenExchange"}},
		"none":           {jwt(`{"sub":"x"}`), nil},
		"not a JWT":      {"opaque-token", nil},
		"not JSON":       {Secret("a." + base64.RawURLEncoding.EncodeToString([]byte("{")) + ".c"), nil},
		"control chars":  {jwt(`{"aud":["a\nb","ok"]}`), []string{"ok"}},
		"too long":       {jwt(`{"aud":["` + strings.Repeat("x", 300) + `"]}`), nil},
		"at most four":   {jwt(`{"aud":["a","b","c","d","e"]}`), []string{"a", "b", "c", "d"}},
		"number, ignore": {jwt(`{"aud":42}`), nil},
	} {
		if got := TokenAudiences(tc.token); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}
