package verify

import (
	"context"
	"errors"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func TestConfigNodes(t *testing.T) {
	is, _, v := setup(t, func(cfg *Config) {
		cfg.Nodes = []string{"node-1", "node-2"}
	})
	ctx := context.Background()

	onNode := func(name string) string {
		c := goodClaims(is.srv.URL)
		if name == "" {
			c.K8s.Pod, c.K8s.Node = nil, nil
		} else {
			c.K8s.Node = &objRef{Name: name, UID: "uid-" + name}
		}
		return mint(t, rsaKey, jose.RS256, "rsa-1", c)
	}
	if id, err := v.Verify(ctx, onNode("node-2")); err != nil || id.NodeName != "node-2" || id.NodeUID != "uid-node-2" {
		t.Fatalf("token of node-2: %+v, %v", id, err)
	}
	for name, tok := range map[string]string{"another node": onNode("node-3"), "no node claim": onNode("")} {
		_, err := v.Verify(ctx, tok)
		var ve *Error
		if !errors.Is(err, ErrNode) || !errors.As(err, &ve) {
			t.Errorf("%s: %v, want ErrNode", name, err)
		}
	}
}

func TestRequireNode(t *testing.T) {
	id := &Identity{NodeName: "node-1", NodeUID: "uid-1"}
	for _, tc := range []struct {
		name, uid string
		ok        bool
	}{
		{"node-1", "", true},
		{"node-1", "uid-1", true},
		{"node-1", "uid-old", false},
		{"node-2", "", false},
	} {
		if err := id.RequireNode(tc.name, tc.uid); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrNode)) {
			t.Errorf("RequireNode(%q, %q) = %v, want ok=%v", tc.name, tc.uid, err, tc.ok)
		}
	}
	if err := (&Identity{}).RequireNode("node-1", ""); !errors.Is(err, ErrNode) {
		t.Errorf("no node claim: %v, want ErrNode", err)
	}
}
