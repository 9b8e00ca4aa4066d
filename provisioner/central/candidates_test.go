package central

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

func TestEligibleByZone(t *testing.T) {
	node := func(name, region, zone string) nodeLabels {
		labels := map[string]string{}
		if zone != "" {
			labels[topology.ZoneKey], labels[topology.RegionKey] = zone, region
		}
		return nodeLabels{name: name, labels: labels}
	}
	csiNode := func(name string, drivers ...string) *storagev1.CSINode {
		cn := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for _, d := range drivers {
			cn.Spec.Drivers = append(cn.Spec.Drivers, storagev1.CSINodeDriver{Name: d})
		}
		return cn
	}
	got := eligibleByZone("csi.toposnap.io",
		[]nodeLabels{node("b1", "r", "b"), node("a2", "r", "a"), node("a1", "r", "a"), node("nozone", "", ""), node("other", "r", "a"), node("unregistered", "r", "a")},
		[]*storagev1.CSINode{csiNode("a1", "csi.toposnap.io"), csiNode("a2", "other.driver", "csi.toposnap.io"), csiNode("b1", "csi.toposnap.io"),
			csiNode("nozone", "csi.toposnap.io"), csiNode("other", "other.driver")})
	want := map[string][]string{"r/a": {"a1", "a2"}, "r/b": {"b1"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("eligibleByZone = %v, want %v (registered nodes with a zone, by zone, sorted)", got, want)
	}
}

// TestCandidateKeeper: a zone Lease that does not exist is made with k
// candidates; a holder stays one; a Lease nobody takes for rotateAfter is
// offered to the next k; nothing is written when nothing changed.
func TestCandidateKeeper(t *testing.T) {
	client := fake.NewClientset()
	var writes int
	client.PrependReactor("*", "leases", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if v := action.GetVerb(); v == "create" || v == "update" {
			writes++
		}
		return false, nil, nil
	})
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	keeper := newCandidateKeeper(client, "ns", 3)
	keeper.now = func() time.Time { return now }
	eligible := make([]string, 20)
	for i := range eligible {
		eligible[i] = fmt.Sprintf("node-%02d", i)
	}
	ctx := context.Background()
	candidates := func() []string {
		t.Helper()
		lease, err := client.CoordinationV1().Leases("ns").Get(ctx, "toposnap-zone-x", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		names, ok := kube.Candidates(lease)
		if !ok {
			t.Fatal("the Lease has no candidates")
		}
		return names
	}
	sync := func() {
		t.Helper()
		if err := keeper.syncLease(ctx, "toposnap-zone-x", eligible); err != nil {
			t.Fatal(err)
		}
	}

	sync()
	first := candidates()
	if len(first) != 3 {
		t.Fatalf("a new Lease's candidates: %v, want 3", first)
	}
	written := writes
	now = now.Add(30 * time.Second)
	sync()
	if writes != written {
		t.Errorf("an unchanged sync wrote the Lease %d times", writes-written)
	}

	now = now.Add(keeper.rotateAfter)
	sync()
	second := candidates()
	if slices.ContainsFunc(second, func(n string) bool { return slices.Contains(first, n) }) {
		t.Errorf("after %v unheld, candidates %v still include the first round's %v", keeper.rotateAfter, second, first)
	}

	lease, err := client.CoordinationV1().Leases("ns").Get(ctx, "toposnap-zone-x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lease.Spec.HolderIdentity = ptr.To("node-19")
	lease.Spec.LeaseDurationSeconds = ptr.To[int32](15)
	lease.Spec.RenewTime = &metav1.MicroTime{Time: now}
	if _, err := client.CoordinationV1().Leases("ns").Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // held: no rotation however long
		now = now.Add(keeper.rotateAfter)
		lease, _ := client.CoordinationV1().Leases("ns").Get(ctx, "toposnap-zone-x", metav1.GetOptions{})
		lease.Spec.RenewTime = &metav1.MicroTime{Time: now}
		if _, err := client.CoordinationV1().Leases("ns").Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		sync()
		if got := candidates(); !slices.Contains(got, "node-19") || len(got) != 3 {
			t.Fatalf("held by node-19: candidates %v, want it among 3", got)
		}
	}
}
