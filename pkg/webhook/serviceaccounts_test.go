package webhook

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
)

// fakeSAClient lists listed and answers GETs from live (what the API
// server has that the watch has not delivered yet).
type fakeSAClient struct {
	listed []corev1.ServiceAccount
	live   map[string]*corev1.ServiceAccount
	gets   atomic.Int32
	w      *watch.FakeWatcher
}

func (f *fakeSAClient) ListServiceAccounts(context.Context, metav1.ListOptions) (*corev1.ServiceAccountList, error) {
	return &corev1.ServiceAccountList{ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: f.listed}, nil
}

func (f *fakeSAClient) WatchServiceAccounts(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return f.w, nil
}

// IsWatchListSemanticsUnSupported: the fake lists, it cannot stream.
func (f *fakeSAClient) IsWatchListSemanticsUnSupported() bool { return true }

func (f *fakeSAClient) GetServiceAccount(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	f.gets.Add(1)
	if sa, ok := f.live[ns+"/"+name]; ok {
		return sa, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccounts"}, name)
}

func sa(ns, name string, ann map[string]string) corev1.ServiceAccount {
	return corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann, ResourceVersion: "1"}}
}

// A ServiceAccount the watch has not delivered yet (created a moment
// before the pod) is read with one GET; one the watch has costs none; one
// that exists nowhere is ErrNoServiceAccount. Only the clouds' annotations
// are kept.
func TestServiceAccountsCacheThenGET(t *testing.T) {
	fresh := sa("shop", "fresh", map[string]string{roleAnn: "arn:aws:iam::111122223333:role/fresh"})
	f := &fakeSAClient{
		listed: []corev1.ServiceAccount{sa("shop", "cart", map[string]string{roleAnn: "arn:aws:iam::111122223333:role/cart", "other": "x"})},
		live:   map[string]*corev1.ServiceAccount{"shop/fresh": &fresh},
		w:      watch.NewFake(),
	}
	s, err := NewServiceAccounts(f, []string{roleAnn, gcpAnn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	if !s.WaitForSync(ctx, 10*time.Second) {
		t.Fatal("no sync")
	}
	ann, err := s.Annotations(ctx, "shop", "cart")
	if err != nil || ann[roleAnn] != "arn:aws:iam::111122223333:role/cart" || len(ann) != 1 || f.gets.Load() != 0 {
		t.Fatalf("cached: %v %v, %d GETs", ann, err, f.gets.Load())
	}
	ann, err = s.Annotations(ctx, "shop", "fresh")
	if err != nil || ann[roleAnn] != "arn:aws:iam::111122223333:role/fresh" || f.gets.Load() != 1 {
		t.Fatalf("fresh: %v %v, %d GETs", ann, err, f.gets.Load())
	}
	if _, err := s.Annotations(ctx, "shop", "ghost"); !errors.Is(err, ErrNoServiceAccount) {
		t.Fatalf("ghost: %v", err)
	}
}
