package peer

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// A refused peer is off the network and comes back on the same address,
// so that a client holding the URL reaches it again; a reset call reads
// a TCP RST.
func TestListenerRefuseAndReset(t *testing.T) {
	ln := NewListener("test")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reset" {
			ResetConnection(w)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	if err := ln.Start("127.0.0.1:0", h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := ln.Start("127.0.0.1:0", h); err == nil {
		t.Error("second Start: no error")
	}
	addr := ln.Addr()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) error {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
			t.Errorf("body %q", b)
		}
		return nil
	}
	if err := get("/"); err != nil {
		t.Fatal(err)
	}
	if err := ln.Refuse(true); err != nil {
		t.Fatal(err)
	}
	if err := get("/"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("while refusing: %v, want connection refused", err)
	}
	if ln.Addr() != addr {
		t.Errorf("address while refusing %s, want %s", ln.Addr(), addr)
	}
	if err := ln.Refuse(false); err != nil {
		t.Fatal(err)
	}
	if err := get("/"); err != nil {
		t.Errorf("after the fault: %v", err)
	}
	if err := get("/reset"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("reset: %v, want connection reset", err)
	}
}

func TestRecord(t *testing.T) {
	var r Record
	if r.Secrets() != nil || r.PodCalls("uid-1") != 0 {
		t.Fatal("a new Record is not empty")
	}
	r.Secret("a", "", "b")
	r.PodCall("uid-1")
	r.PodCall("uid-1")
	if got := r.Secrets(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("Secrets = %q", got)
	}
	if r.PodCalls("uid-1") != 2 || r.PodCalls("uid-2") != 0 {
		t.Errorf("PodCalls uid-1 %d uid-2 %d", r.PodCalls("uid-1"), r.PodCalls("uid-2"))
	}
}

// Inject: no fault passes the call on; a status is written and reported;
// latency cut short by the client ends the call unanswered.
func TestInject(t *testing.T) {
	var faulted []any
	report := func(what any) { faulted = append(faulted, what) }
	write := func(w http.ResponseWriter) func(int) { return func(s int) { w.WriteHeader(s) } }

	rec := httptest.NewRecorder()
	if Inject(rec, httptest.NewRequest(http.MethodPost, "/", nil), false, 0, 0, report, write(rec)) || len(faulted) != 0 {
		t.Errorf("no fault: the call was taken (%v)", faulted)
	}
	rec = httptest.NewRecorder()
	if !Inject(rec, httptest.NewRequest(http.MethodPost, "/", nil), false, 0, 503, report, write(rec)) || rec.Code != 503 || len(faulted) != 1 || faulted[0] != 503 {
		t.Errorf("status fault: code %d, faulted %v", rec.Code, faulted)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec = httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/", nil).WithContext(ctx)
	if !Inject(rec, req, false, time.Hour, 503, report, write(rec)) || len(faulted) != 1 {
		t.Errorf("latency the client gave up on: faulted %v", faulted)
	}
}
