package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestGuardFlags(t *testing.T) {
	base := []string{"--node-name=n", "--sts-endpoint=http://127.0.0.1:1"}
	c, err := parseServeFlags(base, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := guardConfig{requestQPS: 20, requestBurst: 100, maxConnsPerAddr: 64, logBurst: 5, logInterval: time.Minute}
	if c.guard != want {
		t.Fatalf("defaults %+v, want %+v", c.guard, want)
	}
	c, err = parseServeFlags(append(base, "--require-authorization", "--pod-request-qps=5", "--pod-request-burst=7",
		"--pod-max-connections=3", "--pod-log-burst=2", "--pod-log-interval=10s"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := (guardConfig{true, 5, 7, 3, 2, 10 * time.Second}); c.guard != want {
		t.Fatalf("set %+v, want %+v", c.guard, want)
	}
	for _, bad := range []string{"--pod-request-qps=0", "--pod-request-burst=0", "--pod-max-connections=0", "--pod-log-burst=-1", "--pod-log-interval=0s"} {
		if _, err := parseServeFlags(append(base, bad), io.Discard); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad, "=", 2)[0]) {
			t.Errorf("%s: %v, want an error naming the flag", bad, err)
		}
	}
}
