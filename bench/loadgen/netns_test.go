package loadgen

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/testenv"
)

// TestNamespaceSourcesArriveWithPodAddresses checks the one thing the
// generator exists for: each simulated pod's requests reach the server with
// that pod's address as their source.
func TestNamespaceSourcesArriveWithPodAddresses(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ctx := context.Background()
	const prefix = "lgtest"
	if err := netns.Cleanup(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Cleanup(context.Background(), prefix) })

	pods := []netip.Addr{netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("198.18.255.2")}
	var srcs []Dialer
	for i, ip := range pods {
		n, err := netns.Create(ctx, netns.Spec{Name: prefix + string(rune('a'+i)), IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		// Open it the way cmd/loadgen does, by name.
		ns, err := OpenNamespace(n.Name())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Close() })
		srcs = append(srcs, ns)
	}

	// The gateway address sits on every host end of the veth pairs, so a
	// host listener there is reachable from each namespace.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(netns.Gateway4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[netip.Addr]int{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			t.Errorf("remote address %q: %v", r.RemoteAddr, err)
		}
		mu.Lock()
		seen[ap.Addr()]++
		mu.Unlock()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	for _, mode := range []Mode{KeepAlive, NewConn} {
		t.Run(mode.String(), func(t *testing.T) {
			mu.Lock()
			clear(seen)
			mu.Unlock()
			res, err := Run(ctx, Config{
				Addr:        ln.Addr().String(),
				Sources:     srcs,
				Mode:        mode,
				Concurrency: 2,
				Duration:    time.Minute,
				MaxRequests: 20,
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != 20 {
				t.Fatalf("ok %d of 20: %v", res.OK, res.Outcomes)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, ip := range pods {
				if seen[ip] != 10 {
					t.Errorf("server saw %d requests from %v, want 10; all: %v", seen[ip], ip, seen)
				}
			}
		})
	}
}
