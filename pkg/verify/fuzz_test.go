package verify

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzVerify: whatever the bytes, Verify does not panic, accepts nothing
// but what the issuer's keys signed (the signing input, header and claims
// as sent, is one of the minted tokens'; only the signature's base64 may
// differ in its unused trailing bits), and no error text carries the
// input. The seeds run with the unit tests; go test -fuzz=FuzzVerify
// explores further.
func FuzzVerify(f *testing.F) {
	is, _, v := setup(f, nil)
	good := map[string]bool{
		is.rs256(f, "rsa-1"): true,
		is.es256(f, "ec-1"):  true,
	}
	signed := map[string]bool{}
	for tok := range good {
		signed[tok[:strings.LastIndex(tok, ".")]] = true
	}
	for tok := range good {
		f.Add(tok)
		parts := strings.Split(tok, ".")
		f.Add(parts[0] + "." + parts[1] + ".")
		f.Add(base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + parts[1] + ".")
	}
	f.Add("")
	f.Add("a.b.c")
	f.Add(`{"payload":"e30","signatures":[]}`)
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := v.Verify(context.Background(), tok)
		if err == nil {
			if i := strings.LastIndex(tok, "."); i < 0 || !signed[tok[:i]] {
				t.Fatalf("accepted a token nobody signed: %q -> %+v", tok, id)
			}
			return
		}
		if len(tok) >= 8 && strings.Contains(err.Error(), tok) {
			t.Fatalf("error text carries the input: %v", err)
		}
	})
}
