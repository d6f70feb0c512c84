package wire

import (
	"encoding/json"
	"testing"
)

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
