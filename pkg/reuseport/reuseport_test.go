package reuseport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// acceptCounting accepts until ln is closed, answers each connection with one
// byte and counts them.
func acceptCounting(ln net.Listener, n *int, mu *sync.Mutex, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		*n++
		mu.Unlock()
		_, _ = c.Write([]byte{'x'})
		_ = c.Close()
	}
}

func TestTwoListenersShareAnAddressAndBothAccept(t *testing.T) {
	ctx := context.Background()
	a, err := Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen(ctx, "tcp", a.Addr().String())
	if err != nil {
		t.Fatalf("second listener on %s: %v", a.Addr(), err)
	}
	defer b.Close()

	var (
		mu     sync.Mutex
		na, nb int
		wg     sync.WaitGroup
	)
	wg.Add(2)
	go acceptCounting(a, &na, &mu, &wg)
	go acceptCounting(b, &nb, &mu, &wg)

	// Each connection lands on one listener by a hash of its source port, so
	// both get some long before this bound (the chance that 200 connections
	// all land on one of two listeners is 2^-199).
	const max = 200
	total := 0
	for range max {
		c, err := net.Dial("tcp", a.Addr().String())
		if err != nil {
			t.Fatalf("dial %d: %v", total, err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("reading answer %d: %v", total, err)
		}
		c.Close()
		total++
		mu.Lock()
		both := na > 0 && nb > 0
		mu.Unlock()
		if both {
			break
		}
	}
	a.Close()
	b.Close()
	wg.Wait()
	if na == 0 || nb == 0 || na+nb != total {
		t.Errorf("listener A accepted %d, B %d of %d connections; want both > 0 and all accepted", na, nb, total)
	}
}

func TestPlainListenerCannotShare(t *testing.T) {
	// The control case: without SO_REUSEPORT on both sockets the second bind
	// fails, which is what makes a surge rollout impossible without it.
	a, err := Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.Listen("tcp", a.Addr().String())
	if err == nil {
		b.Close()
		t.Fatalf("plain net.Listen joined a SO_REUSEPORT listener on %s", a.Addr())
	}
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("plain net.Listen: %v, want EADDRINUSE", err)
	}
}

func TestListenRejectsNonTCP(t *testing.T) {
	if ln, err := Listen(context.Background(), "unix", "/tmp/x.sock"); err == nil {
		ln.Close()
		t.Fatal("Listen accepted a unix socket")
	}
}

// TestClosingListenerResetsQueuedConnectionsUnlessMigrated pins the kernel
// behaviour the rollout design relies on: connections queued on a listener
// that closes are reset with tcp_migrate_req=0 and handed to the surviving
// listener with tcp_migrate_req=1.
func TestClosingListenerResetsQueuedConnectionsUnlessMigrated(t *testing.T) {
	for _, migrate := range []bool{false, true} {
		t.Run(fmt.Sprintf("tcp_migrate_req=%v", migrate), func(t *testing.T) {
			served, reset, other := queuedThenClose(t, migrate, 64)
			t.Logf("64 queued connections: %d served by the survivor, %d reset, %d other", served, reset, other)
			if other != 0 || served+reset != 64 {
				t.Errorf("served %d + reset %d + other %d, want 64 served or reset", served, reset, other)
			}
			if migrate && reset != 0 {
				t.Errorf("%d connections reset with tcp_migrate_req=1, want 0", reset)
			}
			if !migrate && reset == 0 {
				// Each connection lands on the closing listener with
				// probability 1/2, so none doing so is a 2^-64 event.
				t.Errorf("no connection reset with tcp_migrate_req=0, want some")
			}
		})
	}
}

// queuedThenClose opens two listeners in a fresh network namespace, dials n
// connections that nobody accepts yet, closes the first listener, then lets
// the second accept, and counts how each client connection ends.
func queuedThenClose(t *testing.T, migrate bool, n int) (served, reset, other int) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root to create a network namespace; CI runs as root")
		}
		t.Skip("needs root to create a network namespace")
	}
	type setup struct {
		a, b    net.Listener
		clients []net.Conn
		err     error
	}
	ch := make(chan setup, 1)
	go func() {
		// Sockets belong to the namespace they were created in and can be
		// used from any thread afterwards; only their creation needs this
		// thread. It stays locked and dies with the goroutine.
		runtime.LockOSThread()
		var s setup
		defer func() { ch <- s }()
		ns, err := netns.New()
		if err != nil {
			s.err = fmt.Errorf("creating network namespace: %w", err)
			return
		}
		defer ns.Close()
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			s.err = fmt.Errorf("setting lo up: %w", err)
			return
		}
		val := "0\n"
		if migrate {
			val = "1\n"
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte(val), 0o644); err != nil {
			s.err = fmt.Errorf("setting tcp_migrate_req: %w", err)
			return
		}
		ctx := context.Background()
		if s.a, err = Listen(ctx, "tcp", "127.0.0.1:0"); err != nil {
			s.err = err
			return
		}
		if s.b, err = Listen(ctx, "tcp", s.a.Addr().String()); err != nil {
			s.err = err
			return
		}
		for range n {
			c, err := net.Dial("tcp", s.a.Addr().String())
			if err != nil {
				s.err = fmt.Errorf("dialling: %w", err)
				return
			}
			s.clients = append(s.clients, c)
		}
	}()
	s := <-ch
	t.Cleanup(func() {
		for _, c := range s.clients {
			c.Close()
		}
		if s.b != nil {
			s.b.Close()
		}
	})
	if s.err != nil {
		t.Fatal(s.err)
	}

	s.a.Close()
	var (
		mu       sync.Mutex
		accepted int
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go acceptCounting(s.b, &accepted, &mu, &wg)

	for _, c := range s.clients {
		// A safety bound only: every connection either gets its byte or its
		// reset at once.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadFull(c, make([]byte, 1))
		switch {
		case err == nil:
			served++
		case errors.Is(err, unix.ECONNRESET):
			reset++
		default:
			t.Logf("client: %v", err)
			other++
		}
	}
	s.b.Close()
	wg.Wait()
	if accepted != served {
		t.Errorf("survivor accepted %d connections, clients saw %d answers", accepted, served)
	}
	return served, reset, other
}
