package kube

import (
	"context"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
)

// TestHolderTermEndsWithTheLease: a term's context is live while Holds is
// true and ends when the Lease goes; two agents of one node (the same
// identity) both hold it.
func TestHolderTermEndsWithTheLease(t *testing.T) {
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	terms := make(chan context.Context, 2)
	var first, second Holder
	first.OnStart = func(term context.Context) {
		if !first.Holds() {
			t.Error("OnStart called while Holds is false")
		}
		terms <- term
	}
	second.OnStart = func(term context.Context) { terms <- term }
	done := make(chan struct{}, 2)
	go func() { first.Campaign(ctx, client, "ns", "toposnap-zone-x", "node1"); done <- struct{}{} }()
	var firstTerm context.Context
	select {
	case firstTerm = <-terms:
	case <-time.After(30 * time.Second):
		t.Fatal("the first agent never held the Lease")
	}
	go func() { second.Campaign(ctx, client, "ns", "toposnap-zone-x", "node1"); done <- struct{}{} }()
	select {
	case <-terms:
	case <-time.After(30 * time.Second):
		t.Fatal("the second agent of the same node never held the Lease")
	}
	if !first.Holds() || !second.Holds() || firstTerm.Err() != nil {
		t.Fatalf("holds %v and %v, first term ended: %v", first.Holds(), second.Holds(), firstTerm.Err())
	}
	cancel()
	for range 2 {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("a campaign did not end with its context")
		}
	}
	if first.Holds() || second.Holds() || firstTerm.Err() == nil {
		t.Fatalf("after the end: holds %v and %v, first term ended: %v", first.Holds(), second.Holds(), firstTerm.Err())
	}
}
