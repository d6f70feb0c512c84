package wire

import (
	"net/http"
	"sync"
)

// bufPool lends the buffers answers are built in: a fresh slice per answer
// would allocate on every cache hit, and the hit path allocates nothing.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Buffer lends an empty buffer to build an answer in; Reply gives it back.
func Buffer() *[]byte {
	bp := bufPool.Get().(*[]byte)
	*bp = (*bp)[:0]
	return bp
}

// Reply answers 200 with body b, built in the buffer bp that Buffer lent
// (b is *bp grown), and leaves the body out when headOnly. It then clears
// b and gives bp back: the body holds a credential, and the buffer's next
// borrower is another pod's request.
func Reply(w http.ResponseWriter, bp *[]byte, b []byte, headOnly bool) int {
	w.WriteHeader(http.StatusOK)
	if !headOnly {
		_, _ = w.Write(b)
	}
	clear(b)
	*bp = b
	bufPool.Put(bp)
	return http.StatusOK
}
