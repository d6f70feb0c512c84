package wire

import (
	"encoding/json"
	"testing"
)

// TestAppendJSONStringBytes: every byte, alone and amid plain text, comes
// out as encoding/json writes it.
func TestAppendJSONStringBytes(t *testing.T) {
	for c := range 256 {
		for _, s := range []string{string([]byte{byte(c)}), "ab" + string([]byte{byte(c)}) + "yz"} {
			want, _ := json.Marshal(s)
			if got := AppendJSONString([]byte("x"), s); string(got) != "x"+string(want) {
				t.Errorf("AppendJSONString(%q) = %s, want %s", s, got[1:], want)
			}
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"ya29.abc-_", `a"b`, `a\b`, "a\nb", "<&>", "é", "\xff"} {
		var want, got any
		wb, _ := json.Marshal(s)
		_ = json.Unmarshal(wb, &want)
		if err := json.Unmarshal(AppendJSONString(nil, s), &got); err != nil || got != want {
			t.Errorf("AppendJSONString(%q) = %s (%v)", s, AppendJSONString(nil, s), err)
		}
	}
}
