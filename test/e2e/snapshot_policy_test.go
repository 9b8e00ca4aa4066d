package e2e

import (
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestRetainedSnapshot: deleting a VolumeSnapshot of a Retain class keeps
// its content and the backend snapshot.
func TestRetainedSnapshot(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "src", "e2e-node", "16Mi", nil)
	createPod(t, ns, "src-pod", "src")
	_, node := waitBound(t, ns, "src", "src-pod")
	retain := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-snap-retain"},
		Driver: "csi.toposnap.io", DeletionPolicy: snapv1.VolumeSnapshotContentRetain}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, retain, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "kept", Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: ptr.To("e2e-snap-retain"),
			Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("src")}}}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, snap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var contentName string
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		got, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "kept", metav1.GetOptions{})
		if err != nil || got.Status == nil || !ptr.Deref(got.Status.ReadyToUse, false) {
			return false, nil
		}
		contentName = ptr.Deref(got.Status.BoundVolumeSnapshotContentName, "")
		return true, nil
	}); err != nil {
		t.Fatalf("snapshot never ready: %v", err)
	}
	if err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "kept", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "kept", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("VolumeSnapshot was not deleted: %v", err)
	}
	content, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Retain content %s is gone: %v", contentName, err)
	}
	listed, err := env.Nodes[node].Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: ptr.Deref(content.Status.SnapshotHandle, "")})
	if err != nil || len(listed.GetEntries()) != 1 {
		t.Fatalf("Retain backend snapshot is gone: %v %v", listed.GetEntries(), err)
	}
}

// TestImmediateZoneClaim: a zone-scope class with Immediate binding is
// provisioned by the zone's Lease owner without any pod.
func TestImmediateZoneClaim(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-zone-immediate"}, Provisioner: "csi.toposnap.io",
		Parameters: map[string]string{"scope": "zone"}, VolumeBindingMode: ptr.To(storagev1.VolumeBindingImmediate)}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	createClaim(t, ns, "now", "e2e-zone-immediate", "16Mi", nil)
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "now", metav1.GetOptions{})
		return err == nil && claim.Status.Phase == corev1.ClaimBound, nil
	}); err != nil {
		t.Fatalf("Immediate zone claim never bound: %v", err)
	}
}
