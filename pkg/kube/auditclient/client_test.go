package auditclient

import (
	"context"
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
