package e2e

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestCrashDuringProvisioningAndSnapshots SIGKILLs provisioners and
// snapshotters at random points while 20 claims are being provisioned and
// 10 snapshots cut, restarting each after a moment. Afterwards every claim
// is bound, every snapshot ready, and no backend volume or snapshot is
// left without its PV or content.
func TestCrashDuringProvisioningAndSnapshots(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 8*time.Minute)
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone", "zone", "cn-hangzhou-b")
	snapshotOf(t, ns, "warm-up", mustBoundSource(t, ns, "warm-up-src"))

	// Ten bound sources to snapshot under fire.
	for i := range 10 {
		createClaim(t, ns, fmt.Sprintf("src-%d", i), classFor(i), "16Mi", nil)
		createPod(t, ns, fmt.Sprintf("src-pod-%d", i), fmt.Sprintf("src-%d", i))
	}
	for i := range 10 {
		waitBound(t, ns, fmt.Sprintf("src-%d", i), fmt.Sprintf("src-pod-%d", i))
	}

	seed := time.Now().UnixNano()
	t.Logf("chaos seed %d", seed)
	random := rand.New(rand.NewPCG(uint64(seed), 0))
	stop := make(chan struct{})
	chaosDone := make(chan error, 1)
	kills := 0
	go func() { chaosDone <- chaos(random, stop, &kills) }()

	for i := range 20 {
		createClaim(t, ns, fmt.Sprintf("burst-%d", i), classFor(i), "16Mi", nil)
		createPod(t, ns, fmt.Sprintf("burst-pod-%d", i), fmt.Sprintf("burst-%d", i))
	}
	for i := range 10 {
		snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("snap-%d", i), Namespace: ns},
			Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(fmt.Sprintf("src-%d", i))}}}
		if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, snap, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := waitFor(ctx, 6*time.Second); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if err := <-chaosDone; err != nil {
		t.Fatalf("restarting a component failed: %v", err)
	}
	t.Logf("%d components killed and restarted", kills)
	if kills < 5 {
		t.Fatalf("only %d kills: the chaos did not overlap the work", kills)
	}

	for i := range 20 {
		waitBound(t, ns, fmt.Sprintf("burst-%d", i), fmt.Sprintf("burst-pod-%d", i))
	}
	if err := poll(ctx, 500*time.Millisecond, 4*time.Minute, func() (bool, error) {
		list, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, snap := range list.Items {
			if snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) {
				return false, nil
			}
		}
		return len(list.Items) == 11, nil
	}); err != nil {
		t.Fatalf("not every snapshot became ready after the crashes: %v", err)
	}
	assertNoOrphans(t)
	assertNoOrphanSnapshots(t)
}

func classFor(i int) string {
	if i%2 == 0 {
		return "e2e-node"
	}
	return "e2e-zone"
}

func mustBoundSource(t *testing.T, ns, name string) string {
	t.Helper()
	createClaim(t, ns, name, "e2e-node", "16Mi", nil)
	createPod(t, ns, name+"-pod", name)
	waitBound(t, ns, name, name+"-pod")
	return name
}

// chaos kills a random provisioner or snapshotter every 150–600 ms and
// starts it again 100–300 ms later, until stop closes; then makes sure all
// run.
func chaos(random *rand.Rand, stop <-chan struct{}, kills *int) error {
	nodes := []string{"node1", "node2"}
	components := []string{"provisioner", "snapshotter"}
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(time.Duration(150+random.IntN(450)) * time.Millisecond):
		}
		p := env.Nodes[nodes[random.IntN(len(nodes))]]
		component := components[random.IntN(len(components))]
		p.Kill(component)
		*kills++
		time.Sleep(time.Duration(100+random.IntN(200)) * time.Millisecond) // the crash's downtime, not synchronisation
		if err := p.Restart(component); err != nil {
			return err
		}
	}
}

// waitFor lets the chaos run for d (or until ctx ends).
func waitFor(ctx interface{ Done() <-chan struct{} }, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return fmt.Errorf("test deadline during chaos")
	}
}

// assertNoOrphanSnapshots: every backend snapshot is some content's handle.
func assertNoOrphanSnapshots(t *testing.T) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	contents, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	handles := map[string]bool{}
	for _, content := range contents.Items {
		if content.Status != nil && content.Status.SnapshotHandle != nil {
			handles[*content.Status.SnapshotHandle] = true
		}
	}
	for name, p := range env.Nodes {
		resp, err := p.Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, entry := range resp.GetEntries() {
			if !handles[entry.GetSnapshot().GetSnapshotId()] {
				t.Errorf("backend snapshot %s on %s has no content", entry.GetSnapshot().GetSnapshotId(), name)
			}
		}
	}
}
