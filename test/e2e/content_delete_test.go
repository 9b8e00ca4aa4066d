package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/harness"
)

// TestContentDeletedUnderAReadySnapshot: a tired operator runs `kubectl
// delete volumesnapshotcontent` on the content of a ready VolumeSnapshot.
// As upstream, nothing is lost: the owning snapshotter sees the deletion
// and keeps the content, terminating, with its backend snapshot, and the
// VolumeSnapshot keeps it. Deleting the VolumeSnapshot then takes the
// content along, and the backend snapshot too unless the policy is Retain.
func TestContentDeletedUnderAReadySnapshot(t *testing.T) {
	needEnv(t)
	cases := []struct {
		name, class string
		policy      snapv1.DeletionPolicy
	}{
		{"Delete", "e2e-snap-delete", snapv1.VolumeSnapshotContentDelete},
		{"Retain", "e2e-snap-retain", snapv1.VolumeSnapshotContentRetain},
	}
	createClass(t, "e2e-node", "node")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := adversarialNamespace(t)
			ctx := ctxFor(t, 5*time.Minute)
			class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: tc.class}, Driver: harness.DriverName, DeletionPolicy: tc.policy}
			if _, err := env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			createClaim(t, ns, "src", "e2e-node", "16Mi", nil)
			createPod(t, ns, "src-pod", "src")
			_, node := waitBound(t, ns, "src", "src-pod")
			snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "precious", Namespace: ns},
				Spec: snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: ptr.To(tc.class),
					Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("src")}}}
			if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, snap, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			contentName := waitSnapshotReady(t, ns, "precious")
			content, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
			if err != nil || content.Status == nil || ptr.Deref(content.Status.SnapshotHandle, "") == "" {
				t.Fatalf("content %s of the ready snapshot: %+v, %v", contentName, content, err)
			}
			handle := *content.Status.SnapshotHandle
			if tc.policy == snapv1.VolumeSnapshotContentRetain {
				t.Cleanup(func() { // nothing references it once its content is gone
					_, _ = env.Nodes[node].Controller.DeleteSnapshot(ctxFor(t, time.Minute), &csi.DeleteSnapshotRequest{SnapshotId: handle})
				})
			}

			// Nothing happening proves something only once the owning
			// snapshotter has seen the deletion and chosen to keep it.
			const keptSeries = "toposnap_snapshotter_deleted_content_kept_total"
			keptBefore, err := env.Nodes[node].Metric(ctx, "snapshotter", keptSeries)
			if err != nil {
				t.Fatal(err)
			}
			if err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, contentName, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			var keptAfter float64
			err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
				keptAfter, err = env.Nodes[node].Metric(ctx, "snapshotter", keptSeries)
				return err == nil && keptAfter > keptBefore, nil
			})
			if err != nil {
				t.Fatalf("the snapshotter on %s never handled deleted content %s (%s %v, was %v): %v", node, contentName, keptSeries, keptAfter, keptBefore, err)
			}
			holdsFor(t, 15*time.Second, "content of a ready VolumeSnapshot deleted by hand", func(ctx context.Context) error {
				listed, err := backendListed(ctx, node, handle)
				if err != nil {
					return err
				}
				if !listed {
					return fmt.Errorf("backend snapshot %s is gone from %s", handle, node)
				}
				got, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
				if err != nil {
					return fmt.Errorf("content %s: %w", contentName, err)
				}
				if got.UID != content.UID {
					return fmt.Errorf("content %s (uid %s) was replaced by uid %s", contentName, content.UID, got.UID)
				}
				current, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "precious", metav1.GetOptions{})
				if err != nil {
					return fmt.Errorf("VolumeSnapshot %s/precious: %w", ns, err)
				}
				if current.Status == nil || ptr.Deref(current.Status.BoundVolumeSnapshotContentName, "") != contentName {
					return fmt.Errorf("VolumeSnapshot no longer bound to %s: %s", contentName, describeSnapshotStatus(current))
				}
				return nil
			})

			deleteSnapshot(t, ns, "precious")
			waitGone(t, "VolumeSnapshot "+ns+"/precious", getSnapshot(ns, "precious"), 90*time.Second)
			waitGone(t, "VolumeSnapshotContent "+contentName, getContent(contentName), 90*time.Second)
			kept, err := backendListed(ctx, node, handle)
			if want := tc.policy == snapv1.VolumeSnapshotContentRetain; err != nil || kept != want {
				t.Fatalf("backend snapshot %s kept = %v, want %v (policy %s): %v", handle, kept, want, tc.policy, err)
			}
		})
	}
}

// backendListed reports whether node's driver lists the snapshot.
func backendListed(ctx context.Context, node, handle string) (bool, error) {
	resp, err := env.Nodes[node].Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: handle})
	if err != nil {
		return false, err
	}
	return len(resp.GetEntries()) > 0, nil
}
