package kube

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
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

// TestBoundedHolderCampaignsOnlyWhileListed: a Bounded holder the Lease
// does not list only reads it (one GET per follower poll: no create, no
// update, so none of the election's GET every 2 s); once the Lease lists
// it, it takes the unheld Lease; a holder dropped from the list keeps it.
func TestBoundedHolderCampaignsOnlyWhileListed(t *testing.T) {
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "toposnap-zone-x", CreationTimestamp: metav1.Now(),
			Annotations: map[string]string{CandidatesAnnotation: "node-a,node-b"}},
	}
	client := fake.NewClientset(lease)
	var gets, writes atomic.Int32
	client.PrependReactor("*", "leases", func(action clienttesting.Action) (bool, runtime.Object, error) {
		switch action.GetVerb() {
		case "get":
			gets.Add(1)
		case "create", "update", "patch":
			writes.Add(1)
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := Holder{Bounded: true, followerPoll: 20 * time.Millisecond}
	held := make(chan struct{}, 1)
	h.OnStart = func(context.Context) { held <- struct{}{} }
	go h.Campaign(ctx, client, "ns", "toposnap-zone-x", "node-c")
	waitFor(t, "five follower reads", func() bool { return gets.Load() >= 5 })
	if writes.Load() != 0 || h.Holds() {
		t.Fatalf("a node the Lease does not list wrote it %d times (holds: %v)", writes.Load(), h.Holds())
	}
	listed := lease.DeepCopy()
	listed.Annotations[CandidatesAnnotation] = "node-a,node-c"
	if _, err := client.CoordinationV1().Leases("ns").Update(ctx, listed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("listed, the node never took the unheld Lease")
	}
	current, err := client.CoordinationV1().Leases("ns").Get(ctx, "toposnap-zone-x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	current.Annotations[CandidatesAnnotation] = "node-a"
	if _, err := client.CoordinationV1().Leases("ns").Update(ctx, current, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := writes.Load()
	waitFor(t, "two renewals after the list dropped the holder", func() bool { return writes.Load() >= before+2 })
	if !h.Holds() {
		t.Fatal("the holder gave the Lease up when the list dropped it; it should keep it until it loses it")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
