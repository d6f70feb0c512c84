package harness

import "testing"

func TestParseGoroutineProfile(t *testing.T) {
	const profile = `goroutine profile: total 9
4 @ 0x47a1ce 0x4727d7 0x4a6f05
#	0x6c1d24	net/http.(*persistConn).readLoop+0x9e4	/usr/local/go/src/net/http/transport.go:2395

2 @ 0x47a1ce 0x4727d7
#	0x6c2f10	net/http.(*conn).serve+0x670	/usr/local/go/src/net/http/server.go:2102

3 @ 0x47a1ce 0x40d8a5
#	0x9a1b2c	k8s.io/client-go/util/workqueue.(*Typed[...]).Get+0x8c	/go/pkg/mod/k8s.io/client-go/util/workqueue/queue.go:277
#	0x9a2b3c	github.com/credbroker/agent/pkg/broker.(*Broker).processNext+0x3c	/src/pkg/broker/refresh.go:29
`
	got, err := parseGoroutineProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	if want := (GoroutineCount{Total: 9, Connections: 6, Other: 3}); got != want {
		t.Errorf("parseGoroutineProfile = %+v, want %+v", got, want)
	}
	if _, err := parseGoroutineProfile("not a profile"); err == nil {
		t.Error("parsing text without goroutines: no error")
	}
}
