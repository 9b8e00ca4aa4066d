package kube

import (
	"context"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
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

// TestFollowerHoldsWhileItsNodeDoes: an agent that follows the Lease (no
// campaign) works while the Lease names its node and is fresh, and stops
// when another node takes it over.
func TestFollowerHoldsWhileItsNodeDoes(t *testing.T) {
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	terms := make(chan context.Context, 1)
	var follower Holder
	follower.OnStart = func(term context.Context) { terms <- term }
	go follower.Follow(ctx, client, "ns", "toposnap-zone-x", "node1")
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "toposnap-zone-x", Namespace: "ns"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("node1"), LeaseDurationSeconds: ptr.To[int32](15),
			RenewTime: &metav1.MicroTime{Time: time.Now()}}}
	created, err := client.CoordinationV1().Leases("ns").Create(ctx, lease, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var term context.Context
	select {
	case term = <-terms:
	case <-time.After(30 * time.Second):
		t.Fatal("the follower never held the Lease its node holds")
	}
	if !follower.Holds() {
		t.Fatal("Holds is false during the term")
	}
	created.Spec.HolderIdentity = ptr.To("node2")
	if _, err := client.CoordinationV1().Leases("ns").Update(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-term.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the term did not end when another node took the Lease")
	}
	if follower.Holds() {
		t.Fatal("Holds is true after the term ended")
	}
}

func TestHeldBy(t *testing.T) {
	now := time.Now()
	lease := func(holder string, renewed time.Duration) *coordinationv1.Lease {
		return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder),
			LeaseDurationSeconds: ptr.To[int32](15), RenewTime: &metav1.MicroTime{Time: now.Add(-renewed)}}}
	}
	for _, tc := range []struct {
		name  string
		lease *coordinationv1.Lease
		want  bool
	}{
		{"fresh, ours", lease("node1", time.Second), true},
		{"expired, ours", lease("node1", 16*time.Second), false},
		{"fresh, another's", lease("node2", time.Second), false},
		{"released", lease("", time.Second), false},
		{"none", nil, false},
		{"never renewed", &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("node1")}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := HeldBy(tc.lease, "node1", now); got != tc.want {
				t.Fatalf("HeldBy = %v, want %v", got, tc.want)
			}
		})
	}
}
