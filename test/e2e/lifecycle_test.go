package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

// poolFree asks node's driver how much its node pool has left.
func poolFree(t *testing.T, node string) int64 {
	t.Helper()
	resp, err := env.Nodes[node].Controller.GetCapacity(ctxFor(t, time.Minute), &csi.GetCapacityRequest{Parameters: map[string]string{"scope": "node"}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAvailableCapacity()
}

// TestExpansion: growing a bound claim's request grows its PV, the claim's
// reported capacity and the pool's accounting.
func TestExpansion(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "grow", "e2e-node", "64Mi", nil)
	createPod(t, ns, "app", "grow")
	pv, node := waitBound(t, ns, "grow", "app")
	before := poolFree(t, node)

	patch := `{"spec":{"resources":{"requests":{"storage":"256Mi"}}}}`
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, "grow", "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	want := resource.MustParse("256Mi")
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		got, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "grow", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pvSize, claimSize := got.Spec.Capacity[corev1.ResourceStorage], claim.Status.Capacity[corev1.ResourceStorage]
		return pvSize.Cmp(want) == 0 && claimSize.Cmp(want) == 0, nil
	}); err != nil {
		t.Fatalf("PV and claim never reported 256Mi: %v", err)
	}
	if after := poolFree(t, node); before-after != 192<<20 {
		t.Fatalf("pool free went from %d to %d, want %d less", before, after, 192<<20)
	}
}

// TestReclaimPolicies: deleting a Delete-policy claim removes PV and volume;
// a Retain-policy claim leaves both.
func TestReclaimPolicies(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	createClass(t, "e2e-node", "node")
	retain := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-retain"}, Provisioner: "csi.toposnap.io",
		Parameters: map[string]string{"scope": "node"}, VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimRetain)}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctx, retain, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	createClaim(t, ns, "deleted", "e2e-node", "64Mi", nil)
	createPod(t, ns, "a", "deleted")
	createClaim(t, ns, "retained", "e2e-retain", "64Mi", nil)
	createPod(t, ns, "b", "retained")
	deletedPV, _ := waitBound(t, ns, "deleted", "a")
	retainedPV, retainedNode := waitBound(t, ns, "retained", "b")
	for _, pod := range []string{"a", "b"} {
		if err := env.Cluster.Client.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatal(err)
		}
	}
	for _, claim := range []string{"deleted", "retained"} {
		if err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, claim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		_, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, deletedPV.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("Delete-policy PV %s survived its claim: %v", deletedPV.Name, err)
	}
	if allVolumes(t)[deletedPV.Spec.CSI.VolumeHandle] {
		t.Fatalf("backend volume %s of the Delete-policy PV survived", deletedPV.Spec.CSI.VolumeHandle)
	}
	if err := poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
		pv, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, retainedPV.Name, metav1.GetOptions{})
		return err == nil && pv.Status.Phase == corev1.VolumeReleased, err
	}); err != nil {
		t.Fatalf("Retain-policy PV %s is not Released: %v", retainedPV.Name, err)
	}
	if !allVolumes(t)[retainedPV.Spec.CSI.VolumeHandle] {
		t.Fatalf("backend volume of the Retain-policy PV is gone")
	}
	// Retained data is the operator's: clean up as an operator would.
	if err := env.Cluster.Client.CoreV1().PersistentVolumes().Delete(ctx, retainedPV.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Nodes[retainedNode].Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: retainedPV.Spec.CSI.VolumeHandle}); err != nil {
		t.Fatal(err)
	}
}

// allVolumes lists the backend volume IDs every node's driver reports
// (zone volumes appear on both nodes of the zone).
func allVolumes(t *testing.T) map[string]bool {
	t.Helper()
	volumes := map[string]bool{}
	for _, node := range env.Nodes {
		resp, err := node.Controller.ListVolumes(ctxFor(t, time.Minute), &csi.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, entry := range resp.GetEntries() {
			volumes[entry.GetVolume().GetVolumeId()] = true
		}
	}
	return volumes
}

// TestStorageCapacityPublished: each node publishes its node pool's free
// capacity for node-scope classes, and the zone pool's for zone classes.
func TestStorageCapacityPublished(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone", "zone", "cn-hangzhou-b")
	want := map[string]bool{
		"e2e-node/" + topology.NodeKey + "=node1":         false,
		"e2e-node/" + topology.NodeKey + "=node2":         false,
		"e2e-zone/" + topology.ZoneKey + "=cn-hangzhou-b": false,
	}
	if err := poll(ctx, 500*time.Millisecond, time.Minute, func() (bool, error) {
		list, err := env.Cluster.Client.StorageV1().CSIStorageCapacities("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range list.Items {
			for key, value := range c.NodeTopology.MatchLabels {
				if key == topology.NodeKey || key == topology.ZoneKey {
					id := c.StorageClassName + "/" + key + "=" + value
					if _, ok := want[id]; ok && c.Capacity != nil && c.Capacity.Value() > 0 {
						want[id] = true
					}
				}
			}
		}
		for _, found := range want {
			if !found {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("CSIStorageCapacity objects missing: %v (found: %v)", err, want)
	}
}

// TestBadInput: a claim restoring a missing snapshot (its pod's
// FailedScheduling event says why), a snapshot of a missing claim (status
// error), and a class with an unknown parameter (ProvisioningFailed) each
// leave a clear message, and nothing is created.
func TestBadInput(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	createClass(t, "e2e-node", "node")
	typo := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-typo"}, Provisioner: "csi.toposnap.io",
		Parameters: map[string]string{"scpoe": "zone"}, VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctx, typo, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	volumesBefore := countVolumes(t)

	apiGroup := "snapshot.storage.k8s.io"
	createClaim(t, ns, "from-nothing", "e2e-node", "64Mi", &corev1.TypedLocalObjectReference{APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: "no-such-snapshot"})
	createPod(t, ns, "a", "from-nothing")
	createClaim(t, ns, "typo", "e2e-typo", "64Mi", nil)
	createPod(t, ns, "b", "typo")
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "of-nothing", Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("no-such-claim")}}}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, snap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The extender keeps the pod of a restore from a missing snapshot off
	// every node, and its reason reaches the pod's FailedScheduling event.
	waitEvent(t, ns, "a", "FailedScheduling", "VolumeSnapshot "+ns+"/no-such-snapshot, which does not exist")
	waitEvent(t, ns, "typo", "ProvisioningFailed", "unknown parameter(s) scpoe")
	if err := poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
		got, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "of-nothing", metav1.GetOptions{})
		return err == nil && got.Status != nil && got.Status.Error != nil &&
			strings.Contains(ptr.Deref(got.Status.Error.Message, ""), "no-such-claim"), nil
	}); err != nil {
		t.Fatalf("snapshot of a missing claim has no status error naming it: %v", err)
	}
	if after := countVolumes(t); after != volumesBefore {
		t.Fatalf("bad input created volumes: %d before, %d after", volumesBefore, after)
	}
	pvs, err := env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pv := range pvs.Items {
		if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == ns {
			t.Fatalf("bad input produced PV %s", pv.Name)
		}
	}
	contents, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range contents.Items {
		if content.Spec.VolumeSnapshotRef.Namespace == ns {
			t.Fatalf("snapshot of a missing claim produced content %s", content.Name)
		}
	}
}

func countVolumes(t *testing.T) int { return len(allVolumes(t)) }

// waitEvent waits for an event on object with reason whose message mentions text.
func waitEvent(t *testing.T, ns, object, reason, text string) {
	t.Helper()
	ctx := ctxFor(t, 2*time.Minute)
	var seen []string
	if err := poll(ctx, 200*time.Millisecond, 90*time.Second, func() (bool, error) {
		events, err := env.Cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + object})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range events.Items {
			seen = append(seen, e.Reason+": "+e.Message)
			if e.Reason == reason && strings.Contains(e.Message, text) {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("no %s event on %s mentioning %q; events: %q", reason, object, text, seen)
	}
}

// assertNoOrphans: every toposnap PV has its backend volume and every
// backend volume has a PV (checked against ListVolumes on both nodes).
func assertNoOrphans(t *testing.T) {
	t.Helper()
	ctx := ctxFor(t, 2*time.Minute)
	volumes := allVolumes(t)
	pvs, err := env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	referenced := map[string]bool{}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != "csi.toposnap.io" {
			continue
		}
		referenced[pv.Spec.CSI.VolumeHandle] = true
		if !volumes[pv.Spec.CSI.VolumeHandle] {
			t.Errorf("PV %s has no backend volume %s", pv.Name, pv.Spec.CSI.VolumeHandle)
		}
	}
	for id := range volumes {
		if !referenced[id] {
			t.Errorf("backend volume %s has no PV", id)
		}
	}
}
