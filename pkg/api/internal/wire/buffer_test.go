package wire

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// Reply sends the body (none when headOnly) and clears the buffer before
// it goes back to the pool, so that no credential outlives its answer.
func TestReplyClearsTheBuffer(t *testing.T) {
	for _, headOnly := range []bool{false, true} {
		bp := Buffer()
		if len(*bp) != 0 {
			t.Fatalf("Buffer lent %d bytes, want none", len(*bp))
		}
		b := append(*bp, "SECRET"...)
		rec := httptest.NewRecorder()
		if code := Reply(rec, bp, b, headOnly); code != http.StatusOK || rec.Code != http.StatusOK {
			t.Errorf("headOnly=%v: Reply = %d, recorded %d, want 200", headOnly, code, rec.Code)
		}
		if want := map[bool]string{false: "SECRET", true: ""}[headOnly]; rec.Body.String() != want {
			t.Errorf("headOnly=%v: body %q, want %q", headOnly, rec.Body, want)
		}
		if string(b) != "\x00\x00\x00\x00\x00\x00" {
			t.Errorf("headOnly=%v: buffer holds %q after Reply, want it cleared", headOnly, b)
		}
	}
}
