// Package floor is the benchmark's floor: the least an HTTP server written
// with net/http can do to answer a credentials request. It returns a fixed
// credentials document of a chosen size and does nothing else: no lookup of
// the caller, no cache, no metrics, no logging. The agent is measured against
// it with the same generator in the same run, so their ratio says what the
// agent's own work costs.
package floor

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Body returns a container-credentials JSON document of exactly size bytes,
// shaped like the agent's answer (the session token is the padding). The
// values are fixed, fake and safe to print.
func Body(size int) ([]byte, error) {
	doc := func(token string) []byte {
		b, _ := json.Marshal(struct {
			AccessKeyID     string `json:"AccessKeyId"`
			SecretAccessKey string
			Token           string
			Expiration      string
			AccountID       string `json:"AccountId"`
		}{
			AccessKeyID:     "ASIAFLOORFLOORFLOOR0",
			SecretAccessKey: "floorfloorfloorfloorfloorfloorfloorfloor",
			Token:           token,
			Expiration:      time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC).Format(time.RFC3339),
			AccountID:       "123456789012",
		})
		return b
	}
	base := len(doc(""))
	if size < base {
		return nil, fmt.Errorf("floor: body size %d below the smallest document (%d bytes)", size, base)
	}
	return doc(strings.Repeat("F", size-base)), nil
}

// Handler answers every request with body as application/json.
func Handler(body []byte) http.Handler {
	length := strconv.Itoa(len(body))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		w.Write(body)
	})
}
