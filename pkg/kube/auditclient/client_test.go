package auditclient

import (
	"context"
	"errors"
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/pkg/audit"
)

var _ audit.Lister = (*Client)(nil)

// pagedList serves items in pages of limit, as the API server does.
type pagedList struct {
	items []int
	calls int
}

type intPage struct {
	items []int
	next  string
}

func (p *intPage) GetContinue() string { return p.next }

func (l *pagedList) List(_ context.Context, opts metav1.ListOptions) (*intPage, error) {
	l.calls++
	start := 0
	if opts.Continue != "" {
		fmt.Sscan(opts.Continue, &start)
	}
	end := min(start+int(opts.Limit), len(l.items))
	p := &intPage{items: l.items[start:end]}
	if end < len(l.items) {
		p.next = fmt.Sprint(end)
	}
	return p, nil
}

func TestPages(t *testing.T) {
	l := &pagedList{items: make([]int, 1234)}
	for i := range l.items {
		l.items[i] = i
	}
	var got []int
	maxPage := 0
	if err := pages(context.Background(), l, "ints", 100, metav1.ListOptions{}, func(p *intPage) error {
		got = append(got, p.items...)
		maxPage = max(maxPage, len(p.items))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1234 || got[1233] != 1233 || l.calls != 13 || maxPage != 100 {
		t.Errorf("%d items in %d calls, largest page %d", len(got), l.calls, maxPage)
	}
}

// eachItem hands over every item of a page, in order and in place, and
// stops at the first error.
func TestEachItem(t *testing.T) {
	items := []int{1, 2, 3, 4}
	var seen []int
	if err := eachItem(items, func(p *int) error { seen = append(seen, *p); *p *= 10; return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[1 2 3 4]" || fmt.Sprint(items) != "[10 20 30 40]" {
		t.Errorf("saw %v, items now %v; want [1 2 3 4] and each changed in place", seen, items)
	}
	stop := errors.New("stop")
	n := 0
	if err := eachItem(items, func(*int) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Errorf("eachItem = %v after %d calls, want stop after 1", err, n)
	}
}
