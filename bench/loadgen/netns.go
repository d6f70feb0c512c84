package loadgen

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/credbroker/agent/integration/netns"
)

// Namespace is a network namespace that connections can be opened in: the
// integration harness's handle, so that one implementation of "dial from
// inside a namespace" serves the tests, the benchmark and bench/cmd/loadgen.
type Namespace = netns.Handle

// OpenNamespace opens a network namespace by name (as created by
// `ip netns add`, found under /var/run/netns) or by path.
func OpenNamespace(nameOrPath string) (*Namespace, error) { return netns.Open(nameOrPath) }

// OpenNamespaces opens every namespace whose name matches the glob pattern
// under /var/run/netns, sorted by name.
func OpenNamespaces(pattern string) ([]*Namespace, error) {
	paths, err := filepath.Glob(filepath.Join("/var/run/netns", pattern))
	if err != nil {
		return nil, fmt.Errorf("matching network namespaces %q: %w", pattern, err)
	}
	out := make([]*Namespace, 0, len(paths))
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			continue
		}
		ns, err := OpenNamespace(p)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out = append(out, ns)
	}
	return out, nil
}
