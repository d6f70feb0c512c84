package main

import (
	"os"
	"strings"
)

// listFlag is a flag that may be repeated and also takes comma-separated
// values: --allowed-role-arn a --allowed-role-arn b,c.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// firstEnv is the first of the named environment variables that is set, a
// flag's default.
func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}
