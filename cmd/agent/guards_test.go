package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestGuardFlags(t *testing.T) {
	c := mustParse(t, minimalFlags...)
	want := guardConfig{requestQPS: 20, requestBurst: 100, maxConnsPerAddr: 64, logBurst: 5, logInterval: time.Minute}
	if c.guard != want {
		t.Fatalf("defaults %+v, want %+v", c.guard, want)
	}
	c = mustParse(t, append(minimalFlags, "--require-authorization", "--pod-request-qps=5", "--pod-request-burst=7",
		"--pod-max-connections=3", "--pod-log-burst=2", "--pod-log-interval=10s")...)
	if want := (guardConfig{true, 5, 7, 3, 2, 10 * time.Second}); c.guard != want {
		t.Fatalf("set %+v, want %+v", c.guard, want)
	}
	for _, bad := range []string{"--pod-request-qps=0", "--pod-request-burst=0", "--pod-max-connections=0", "--pod-log-burst=-1", "--pod-log-interval=0s"} {
		if _, err := parseServeFlags(append(minimalFlags, bad), io.Discard); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad, "=", 2)[0]) {
			t.Errorf("%s: %v, want an error naming the flag", bad, err)
		}
	}
}
