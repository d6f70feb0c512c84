package wire

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
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

// TestAppendRFC3339Seconds: the same text as the layout, for instants
// across years, leap days, time zones, sub-second parts (truncated), and
// years the fast path leaves to the layout.
func TestAppendRFC3339Seconds(t *testing.T) {
	const layout = "2006-01-02T15:04:05Z"
	east := time.FixedZone("east", 5*3600+1800)
	times := []time.Time{
		time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2028, 2, 29, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(2026, 12, 31, 23, 30, 0, 1, east),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(0, 6, 1, 0, 0, 0, 0, time.UTC),
		time.Now(),
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 10000 {
		times = append(times, time.Unix(r.Int64N(1<<35), r.Int64N(1e9)).In(east))
	}
	for _, tm := range times {
		want := tm.UTC().Truncate(time.Second).AppendFormat([]byte("x"), layout)
		if got := AppendRFC3339Seconds([]byte("x"), tm); string(got) != string(want) {
			t.Fatalf("%v: %s, want %s", tm, got, want)
		}
	}
}
