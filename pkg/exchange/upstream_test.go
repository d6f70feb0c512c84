package exchange

import (
	"strings"
	"testing"
)

func TestKindForStatus(t *testing.T) {
	known := map[int]ErrorKind{429: Throttled, 403: Denied}
	for _, tc := range []struct {
		status int
		want   ErrorKind
	}{
		{429, Throttled}, {403, Denied},
		{400, InvalidRequest}, {401, InvalidRequest}, {404, InvalidRequest}, {499, InvalidRequest},
		{500, Transient}, {503, Transient}, {302, Transient}, {200, Transient}, {0, Transient},
	} {
		if got := KindForStatus(tc.status, known); got != tc.want {
			t.Errorf("KindForStatus(%d) = %v, want %v", tc.status, got, tc.want)
		}
	}
}

func TestAppendDetails(t *testing.T) {
	var b strings.Builder
	b.WriteString("call")
	AppendDetails(&b, "code", "", "detail")
	if got, want := b.String(), "call: code: detail"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
