package aws_test

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
)

// startMotoServer runs moto_server on a free loopback port for the duration
// of the test and returns its URL. Without moto_server on PATH the test is
// skipped, except in CI (CI=true), where that is a failure.
func startMotoServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		testfake.Unavailable(t, "moto_server not on PATH: %v", err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	var out strings.Builder
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting moto_server: %v", err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	// moto_server is a Python program: it takes a second or two to listen.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		select {
		case <-exited:
			t.Fatalf("moto_server exited before listening: %v\n%s", waitErr, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited // out is only safe to read once moto_server is gone
			t.Fatalf("moto_server did not listen on %s within a minute\n%s", addr, out.String())
		}
	}
}

func TestExchangeAgainstMoto(t *testing.T) {
	endpoint := startMotoServer(t)
	s := newSTS(t, aws.Config{Region: "eu-west-1", Endpoint: endpoint, Duration: 2 * time.Hour})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const role = "arn:aws:iam::210987654321:role/moto-web"
	session := aws.SessionName("app", "web-7d9f8-abcde", "0b1e2f3a-1111-2222-3333-444455556666")
	before := time.Now()
	got, err := s.Exchange(ctx, exchange.Request{Token: testToken, Role: role, SessionName: session})
	if err != nil {
		t.Fatalf("Exchange against moto: %v", err)
	}

	if got.Kind != exchange.KindAWS {
		t.Errorf("Kind %v, want KindAWS", got.Kind)
	}
	if !strings.HasPrefix(got.AccessKeyID, "ASIA") {
		t.Errorf("AccessKeyID %q, want a temporary (ASIA...) key", got.AccessKeyID)
	}
	if got.SecretAccessKey.Reveal() == "" || got.SessionToken.Reveal() == "" {
		t.Error("secret key or session token empty")
	}
	if got.AccountID != "210987654321" {
		t.Errorf("AccountID %q, want 210987654321", got.AccountID)
	}
	// moto grants exactly the requested duration; its Expiration carries
	// microseconds. The bounds leave a minute of slack for a slow machine.
	lo, hi := before.Add(2*time.Hour-time.Minute), time.Now().Add(2*time.Hour+time.Minute)
	if got.Expiration.Before(lo) || got.Expiration.After(hi) {
		t.Errorf("Expiration %v, want about two hours from now (%v .. %v)", got.Expiration, lo, hi)
	}
	if got.Expiration.Location() != time.UTC {
		t.Errorf("Expiration location %v, want UTC", got.Expiration.Location())
	}
}
