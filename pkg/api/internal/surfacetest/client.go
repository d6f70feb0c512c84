package surfacetest

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// RunClient runs an SDK client process, name with args, whose whole
// environment is env, and returns what it printed. The surfaces' tests
// read their answers with the clients pods run; a client that fails or
// outlives timeout fails the test, with what and the client's stderr.
func RunClient(t testing.TB, what string, timeout time.Duration, env []string, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", what, err, stderr.String())
	}
	return b
}

// RunJSONClient is RunClient for a client that prints one JSON document,
// decoded into out.
func RunJSONClient(t testing.TB, out any, what string, timeout time.Duration, env []string, name string, args ...string) {
	t.Helper()
	b := RunClient(t, what, timeout, env, name, args...)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("decoding %q: %v", b, err)
	}
}
