package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/provisioner"
)

// otherDriver is a second CSI driver of the cluster. Nothing serves it: its
// objects are what its provisioner and snapshot controller would leave
// while one of its restores and one of its clones wait.
const otherDriver = "other.csi.example.com"

// TestForeignSourceFinalizersKept: another driver's snapshot and claim
// carry upstream's protection finalizers (the names toposnap uses too)
// while that driver's pending restore and clone read them. toposnap's
// provisioners leave them alone. That they looked at them is shown by
// toposnap's own snapshot and claim, protected after the foreign objects
// were made and read by nothing: their finalizers go.
func TestForeignSourceFinalizersKept(t *testing.T) {
	needEnv(t)
	ns := adversarialNamespace(t)
	ctx := ctxFor(t, 5*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "own-src", "e2e-node", "16Mi", nil)
	createPod(t, ns, "own-pod", "own-src")
	waitBound(t, ns, "own-src", "own-pod")
	createSnapshot(t, ns, "own-snap", "own-src", "")
	waitSnapshotReady(t, ns, "own-snap")

	createForeignSources(t, ctx, ns)
	createClaim(t, ns, "foreign-restore", "e2e-other", "16Mi", snapshotSource("foreign-snap"))
	createClaim(t, ns, "foreign-clone", "e2e-other", "16Mi", &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "foreign-src"})

	// The controls: toposnap's sources, protected now, after the foreign ones.
	snaps := env.Snaps.SnapshotV1().VolumeSnapshots(ns)
	claims := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns)
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		snap, err := snaps.Get(ctx, "own-snap", metav1.GetOptions{})
		if err != nil {
			return err
		}
		snap.Finalizers = append(snap.Finalizers, provisioner.FinalizerRestoreSource)
		_, err = snaps.Update(ctx, snap, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		claim, err := claims.Get(ctx, "own-src", metav1.GetOptions{})
		if err != nil {
			return err
		}
		claim.Finalizers = append(claim.Finalizers, provisioner.FinalizerCloneSource)
		_, err = claims.Update(ctx, claim, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
		snap, err := snaps.Get(ctx, "own-snap", metav1.GetOptions{})
		if err != nil || slices.Contains(snap.Finalizers, provisioner.FinalizerRestoreSource) {
			return false, nil
		}
		claim, err := claims.Get(ctx, "own-src", metav1.GetOptions{})
		return err == nil && !slices.Contains(claim.Finalizers, provisioner.FinalizerCloneSource), nil
	}); err != nil {
		t.Fatalf("toposnap never removed the protection of its own snapshot and claim, which nothing reads: "+
			"its provisioners did not get to the sources, so the foreign ones prove nothing: %v", err)
	}

	snap, err := snaps.Get(ctx, "foreign-snap", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(snap.Finalizers, provisioner.FinalizerSnapshotAsSource) {
		t.Errorf("%s's VolumeSnapshot lost %s while its own restore reads it (finalizers now %v)", otherDriver, provisioner.FinalizerSnapshotAsSource, snap.Finalizers)
	}
	claim, err := claims.Get(ctx, "foreign-src", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(claim.Finalizers, provisioner.FinalizerCloneSource) {
		t.Errorf("%s's claim lost %s while its own clone reads it (finalizers now %v)", otherDriver, provisioner.FinalizerCloneSource, claim.Finalizers)
	}
}

// createForeignSources makes the other driver's class, its snapshot
// foreign-snap (pre-provisioned content, bound and ready) and its claim
// foreign-src (bound to a static PV), both protected as that driver's
// provisioner protects a source it reads. At the end of the test their
// protection goes, as that provisioner would take it off, and the
// cluster-wide PV and content are deleted.
func createForeignSources(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-other"}, Provisioner: otherDriver,
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingImmediate), ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimRetain)}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	name := "e2e-foreign-" + ns // PVs and contents are cluster-wide
	t.Cleanup(func() {
		ctx := ctxFor(t, time.Minute)
		strip := []byte(`{"metadata":{"finalizers":null}}`)
		_, _ = env.Snaps.SnapshotV1().VolumeSnapshots(ns).Patch(ctx, "foreign-snap", types.MergePatchType, strip, metav1.PatchOptions{})
		_, _ = env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, "foreign-src", types.MergePatchType, strip, metav1.PatchOptions{})
		_ = env.Cluster.Client.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{})
		_ = env.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, name, metav1.DeleteOptions{})
	})

	content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: otherDriver, DeletionPolicy: snapv1.VolumeSnapshotContentRetain,
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To("other-snapshot")},
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "foreign-snap"}}}
	contents := env.Snaps.SnapshotV1().VolumeSnapshotContents()
	if _, err := contents.Create(ctx, content, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "foreign-snap", Namespace: ns,
		Finalizers: []string{provisioner.FinalizerSnapshotAsSource}},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To(name)}}}
	snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, snap, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Bind them as the other driver's snapshot controller does.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		content, err := contents.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		content.Spec.VolumeSnapshotRef.UID = snap.UID
		_, err = contents.Update(ctx, content, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "foreign-snap", metav1.GetOptions{})
		if err != nil {
			return err
		}
		snap.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To(name), ReadyToUse: ptr.To(true),
			RestoreSize: ptr.To(resource.MustParse("16Mi"))}
		_, err = env.Snaps.SnapshotV1().VolumeSnapshots(ns).UpdateStatus(ctx, snap, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              "e2e-other",
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: "foreign-src"},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: otherDriver, VolumeHandle: "other-volume"}},
		}}
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "foreign-src", Namespace: ns,
		Finalizers: []string{provisioner.FinalizerCloneSource}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To("e2e-other"),
			VolumeName:       name,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		}}
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "foreign-src", metav1.GetOptions{})
		return err == nil && claim.Status.Phase == corev1.ClaimBound, nil
	}); err != nil {
		t.Fatalf("%s's claim never bound to its static PV: %v", otherDriver, err)
	}
}
