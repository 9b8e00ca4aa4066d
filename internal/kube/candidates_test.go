package kube

import (
	"fmt"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestMayCampaign(t *testing.T) {
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	lease := func(annotation *string, holder string, renewedAgo time.Duration) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-time.Hour))},
			Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To[int32](15)}}
		if annotation != nil {
			l.Annotations = map[string]string{CandidatesAnnotation: *annotation}
		}
		if holder != "" {
			l.Spec.HolderIdentity = ptr.To(holder)
			l.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-renewedAgo)}
		}
		return l
	}
	for _, tt := range []struct {
		name  string
		lease *coordinationv1.Lease
		want  bool
	}{
		{"no annotation: everyone", lease(nil, "a", time.Second), true},
		{"listed", lease(ptr.To("a,me,c"), "a", time.Second), true},
		{"not listed, held and renewed", lease(ptr.To("a,c"), "a", time.Second), false},
		{"not listed, but its holder", lease(ptr.To("a,c"), "me", time.Second), true},
		{"not listed, renewed within duration plus grace", lease(ptr.To("a,c"), "a", 70*time.Second), false},
		{"not listed, unrenewed past duration plus grace", lease(ptr.To("a,c"), "a", 80*time.Second), true},
		{"empty list, never held for long", lease(ptr.To(""), "", 0), true},
		{"not listed, released a moment ago (a candidate will take it)", released(lease(ptr.To("a,c"), "", 0), now.Add(-time.Second)), false},
		{"not listed, released long ago", released(lease(ptr.To("a,c"), "", 0), now.Add(-2*time.Minute)), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := MayCampaign(tt.lease, "me", now, time.Minute); got != tt.want {
				t.Errorf("MayCampaign = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestChooseCandidates(t *testing.T) {
	nodes := make([]string, 50)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("node-%02d", i)
	}
	first := ChooseCandidates(nodes, "toposnap-zone-a", "", 0, 3)
	if len(first) != 3 || !slices.IsSorted(first) {
		t.Fatalf("round 0: %v, want 3 sorted names", first)
	}
	if again := ChooseCandidates(reversed(nodes), "toposnap-zone-a", "", 0, 3); !slices.Equal(again, first) {
		t.Errorf("the choice depends on the order nodes were listed in: %v, then %v", first, again)
	}
	next := ChooseCandidates(nodes, "toposnap-zone-a", "", 1, 3)
	for _, n := range next {
		if slices.Contains(first, n) {
			t.Errorf("round 1 %v repeats round 0's %v: a round of dead candidates would be offered again", next, first)
		}
	}
	if other := ChooseCandidates(nodes, "toposnap-zone-a-snapshots", "", 0, 3); slices.Equal(other, first) {
		t.Errorf("both of a zone's Leases chose %v: one node's outage would stall both", first)
	}
	withHolder := ChooseCandidates(nodes, "toposnap-zone-a", "node-49", 0, 3)
	if len(withHolder) != 3 || !slices.Contains(withHolder, "node-49") {
		t.Errorf("with holder node-49: %v, want it among 3", withHolder)
	}
	if gone := ChooseCandidates(nodes, "toposnap-zone-a", "node-gone", 0, 3); !slices.Equal(gone, first) {
		t.Errorf("a holder that is not eligible is not kept: %v, want %v", gone, first)
	}
	// Removing a node that was not chosen changes nothing.
	var without []string
	for _, n := range nodes {
		if !slices.Contains(first, n) && without == nil {
			without = slices.DeleteFunc(slices.Clone(nodes), func(x string) bool { return x == n })
		}
	}
	if got := ChooseCandidates(without, "toposnap-zone-a", "", 0, 3); !slices.Equal(got, first) {
		t.Errorf("removing an unchosen node changed the choice: %v, want %v", got, first)
	}
	if got := ChooseCandidates(nodes[:2], "l", "", 0, 3); len(got) != 2 {
		t.Errorf("two eligible nodes: %v, want both", got)
	}
	if got := ChooseCandidates(nil, "l", "", 0, 3); len(got) != 0 {
		t.Errorf("no eligible node: %v, want none", got)
	}
}

func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// released is lease as client-go leaves it when its holder lets go: no
// holder, a duration of 1 s, renewed at.
func released(lease *coordinationv1.Lease, at time.Time) *coordinationv1.Lease {
	lease.Spec.HolderIdentity = ptr.To("")
	lease.Spec.LeaseDurationSeconds = ptr.To[int32](1)
	lease.Spec.RenewTime = &metav1.MicroTime{Time: at}
	return lease
}
