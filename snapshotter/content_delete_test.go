package snapshotter

import (
	"context"
	"slices"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/fakeapi"
	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/topology"
)

// readySnapshot cuts VolumeSnapshot "snap" of a class with that deletion
// policy on node1 and returns the world, the node and the ready content.
func readySnapshot(t *testing.T, policy snapv1.DeletionPolicy) (*fakeapi.World, *node, *snapv1.VolumeSnapshotContent) {
	t.Helper()
	class := snapshotClass()
	class.DeletionPolicy = policy
	w := fakeapi.NewWorld(t, append(sourceObjects("node1"), class, dynamicSnapshot("snap"))...)
	n := startNode(t, w, "node1")
	n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
	n.settle(t, ns, "snap", "snapcontent-uid-snap")
	content := getContent(w, "snapcontent-uid-snap")
	if snap := getSnapshot(w, ns, "snap"); snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) || content == nil {
		t.Fatalf("snapshot never became ready: %+v", snap.Status)
	}
	return w, n, content
}

// TestDeletedBoundContentKeepsItsSnapshot: `kubectl delete
// volumesnapshotcontent` on the content of a ready VolumeSnapshot deletes
// nothing: the content stays, terminating, with its backend snapshot, and
// the VolumeSnapshot keeps reading it (upstream's contract). Only when the
// VolumeSnapshot is deleted does the deletion policy decide.
func TestDeletedBoundContentKeepsItsSnapshot(t *testing.T) {
	cases := []struct {
		name        string
		policy      snapv1.DeletionPolicy
		wantBackend bool // after the VolumeSnapshot is deleted too
	}{
		{"Delete policy: the backend snapshot goes with the VolumeSnapshot", snapv1.VolumeSnapshotContentDelete, false},
		{"Retain policy: the backend snapshot outlives both", snapv1.VolumeSnapshotContentRetain, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, n, before := readySnapshot(t, tc.policy)
			handle := *before.Status.SnapshotHandle
			ctx := context.Background()
			if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, before.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			n.settle(t, ns, "snap", before.Name)
			after := getContent(w, before.Name)
			switch {
			case n.csi.Count("DeleteSnapshot") != 0 || !slices.Contains(n.csi.SnapshotIDs(), handle):
				t.Fatalf("backend snapshot %s of a live VolumeSnapshot was deleted (CSI calls %v)", handle, n.csi.Calls())
			case after == nil || after.UID != before.UID:
				t.Fatalf("content %s was replaced: uid %s, now %+v", before.Name, before.UID, after)
			case after.DeletionTimestamp == nil || !slices.Contains(after.Finalizers, FinalizerContentBound):
				t.Fatalf("content lost its deletion or its finalizer: %+v", after.ObjectMeta)
			case n.csi.Count("CreateSnapshot") != 1:
				t.Fatalf("snapshot cut again: CSI calls %v", n.csi.Calls())
			}
			if snap := getSnapshot(w, ns, "snap"); ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "") != before.Name {
				t.Fatalf("VolumeSnapshot re-pointed: %+v", snap.Status)
			}

			if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "snap", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			n.settle(t, ns, "snap", before.Name)
			if snap, content := getSnapshot(w, ns, "snap"), getContent(w, before.Name); snap != nil || content != nil {
				t.Fatalf("VolumeSnapshot or content stuck: %v, %v", snap, content)
			}
			if kept := slices.Contains(n.csi.SnapshotIDs(), handle); kept != tc.wantBackend {
				t.Fatalf("backend snapshot kept = %v, want %v (CSI calls %v)", kept, tc.wantBackend, n.csi.Calls())
			}
		})
	}
}

// TestBoundSnapshotIsNeverCutAgain: a VolumeSnapshot whose content vanished
// (its finalizer stripped by hand) reports the content missing and is not
// ready; it is never silently re-pointed at a new cut of today's data.
func TestBoundSnapshotIsNeverCutAgain(t *testing.T) {
	w, n, content := readySnapshot(t, snapv1.VolumeSnapshotContentDelete)
	ctx := context.Background()
	stripped := content.DeepCopy()
	stripped.Finalizers = nil
	if _, err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Update(ctx, stripped, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, content.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.settle(t, ns, "snap", content.Name)
	if again := getContent(w, content.Name); again != nil {
		t.Fatalf("a new content %s (uid %s) was created for a snapshot already bound", again.Name, again.UID)
	}
	snap := getSnapshot(w, ns, "snap")
	if ptr.Deref(snap.Status.ReadyToUse, true) || snap.Status.Error == nil || !strings.Contains(ptr.Deref(snap.Status.Error.Message, ""), "missing") {
		t.Fatalf("VolumeSnapshot does not report its content missing: %+v", snap.Status)
	}
	if n.csi.Count("CreateSnapshot") != 1 || n.csi.Count("DeleteSnapshot") != 0 {
		t.Fatalf("CSI calls after the content vanished: %v", n.csi.Calls())
	}
}

// TestWhichDeletedContentsLoseTheirSnapshot is the sidecar's rule: a
// deleted content's backend snapshot is deleted (policy Delete) or let go
// (Retain) only when no live VolumeSnapshot uses it, read from the API
// server. The being-deleted annotation is anyone's to write (any node's
// ServiceAccount may annotate contents): alone it never deletes anything.
func TestWhichDeletedContentsLoseTheirSnapshot(t *testing.T) {
	cases := []struct {
		name         string
		policy       snapv1.DeletionPolicy
		boundUID     string // the content's volumeSnapshotRef.uid
		snapshot     string // VolumeSnapshot "imported": "none", "live", "deleting", "restoring" (deleting, a restore reads it), "replaced" (same name, new uid)
		beingDeleted bool   // the content carries the being-deleted annotation
		wantGone     bool   // the content is gone
		wantBackend  bool   // the backend snapshot exists
	}{
		{"bound to a live VolumeSnapshot", snapv1.VolumeSnapshotContentDelete, "uid-imported", "live", false, false, true},
		{"bound to a live VolumeSnapshot, marked being-deleted by another node", snapv1.VolumeSnapshotContentDelete, "uid-imported", "live", true, false, true},
		{"bound to a VolumeSnapshot being deleted", snapv1.VolumeSnapshotContentDelete, "uid-imported", "deleting", true, true, false},
		{"bound to a VolumeSnapshot being deleted, Retain", snapv1.VolumeSnapshotContentRetain, "uid-imported", "deleting", true, true, true},
		{"bound to a VolumeSnapshot being deleted, not yet marked by the binder", snapv1.VolumeSnapshotContentDelete, "uid-imported", "deleting", false, false, true},
		{"bound to a VolumeSnapshot being deleted that a restore still reads", snapv1.VolumeSnapshotContentDelete, "uid-imported", "restoring", true, false, true},
		{"bound to a VolumeSnapshot that is gone", snapv1.VolumeSnapshotContentDelete, "uid-imported", "none", false, true, false},
		{"bound to a VolumeSnapshot replaced by another of its name", snapv1.VolumeSnapshotContentDelete, "uid-imported", "replaced", false, true, false},
		{"pre-provisioned, never bound", snapv1.VolumeSnapshotContentDelete, "", "none", false, true, false},
		{"pre-provisioned, never bound, Retain", snapv1.VolumeSnapshotContentRetain, "", "none", false, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "precut", Finalizers: []string{FinalizerContentBound}},
				Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, DeletionPolicy: tc.policy,
					VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "imported", UID: types.UID(tc.boundUID)},
					Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(fakecsi.SnapshotID("s"))}}}
			if tc.beingDeleted {
				content.Annotations = map[string]string{AnnSnapshotBeingDeleted: "yes"}
			}
			objects := []runtime.Object{content}
			if tc.snapshot != "none" {
				snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "imported", UID: "uid-imported"},
					Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To("precut")}}}
				switch tc.snapshot {
				case "deleting", "restoring":
					snap.DeletionTimestamp = ptr.To(metav1.Now())
					snap.Finalizers = []string{FinalizerSnapshotBound}
					if tc.snapshot == "restoring" {
						snap.Finalizers = append(snap.Finalizers, FinalizerRestoreSource)
					}
				case "replaced":
					snap.UID = "uid-imported-2"
				}
				objects = append(objects, snap)
			}
			w := fakeapi.NewWorld(t, objects...)
			n := startNode(t, w, "node1")
			n.csi.AddSnapshot("s", "vol-x", map[string]string{topology.NodeKey: "node1"})
			if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), "precut", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				_ = n.syncContent("precut")
			}
			gone := getContent(w, "precut") == nil
			backend := slices.Contains(n.csi.SnapshotIDs(), fakecsi.SnapshotID("s"))
			if gone != tc.wantGone || backend != tc.wantBackend {
				t.Fatalf("content gone = %v, backend snapshot kept = %v; want %v, %v (CSI calls %v)", gone, backend, tc.wantGone, tc.wantBackend, n.csi.Calls())
			}
		})
	}
}

// TestReimportedContentForgetsItsOldSnapshot: a Retain content outlives its
// VolumeSnapshot with the being-deleted mark on it; an operator imports it
// again for a new VolumeSnapshot. The binding drops the stale mark, and a
// later `kubectl delete volumesnapshotcontent` keeps the backend snapshot
// the new VolumeSnapshot reads.
func TestReimportedContentForgetsItsOldSnapshot(t *testing.T) {
	// As the binder leaves a Retain content whose VolumeSnapshot was deleted,
	// re-pointed by hand at "imported" (uid cleared, policy now Delete).
	content, snap := importable()
	content.Annotations = map[string]string{AnnSnapshotBeingDeleted: "yes"}
	w := fakeapi.NewWorld(t, content, snap)
	n := startNode(t, w, "node1")
	n.csi.AddSnapshot("s", "vol-x", map[string]string{topology.NodeKey: "node1"})
	n.settle(t, ns, "imported", "precut")
	bound := getContent(w, "precut")
	if bound.Spec.VolumeSnapshotRef.UID != "uid-imported" {
		t.Fatalf("content not bound: %+v", bound.Spec.VolumeSnapshotRef)
	}
	if metav1.HasAnnotation(bound.ObjectMeta, AnnSnapshotBeingDeleted) {
		t.Errorf("binding kept the stale %s annotation", AnnSnapshotBeingDeleted)
	}
	if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), "precut", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.settle(t, ns, "imported", "precut")
	if n.csi.Count("DeleteSnapshot") != 0 || getContent(w, "precut") == nil {
		t.Fatalf("content of a live re-imported VolumeSnapshot lost its backend snapshot (CSI calls %v)", n.csi.Calls())
	}
}

// importable is a pre-provisioned Delete-policy content "precut" of backend
// snapshot "s", not bound yet, and the VolumeSnapshot "imported" that
// names it.
func importable() (*snapv1.VolumeSnapshotContent, *snapv1.VolumeSnapshot) {
	content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "precut", Finalizers: []string{FinalizerContentBound}},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "imported"},
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(fakecsi.SnapshotID("s"))}}}
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "imported", UID: "uid-imported"},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To("precut")}}}
	return content, snap
}

// terminatingPreProvisioned is a pre-provisioned content for "imported",
// never bound, deleted while it still holds the bound-protection finalizer,
// and the VolumeSnapshot that names it.
func terminatingPreProvisioned(t *testing.T) (*fakeapi.World, *node) {
	t.Helper()
	content, snap := importable()
	w := fakeapi.NewWorld(t, content, snap)
	if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), "precut", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, w, "node1")
	n.csi.AddSnapshot("s", "vol-x", map[string]string{topology.NodeKey: "node1"})
	return w, n
}

// TestTerminatingContentIsNeverBound: a VolumeSnapshot naming a
// pre-provisioned content already being deleted is not bound to it (its
// backend snapshot may be going this very moment); it reports why.
func TestTerminatingContentIsNeverBound(t *testing.T) {
	w, n := terminatingPreProvisioned(t)
	_ = n.syncSnapshot(ns, "imported")
	if uid := getContent(w, "precut").Spec.VolumeSnapshotRef.UID; uid != "" {
		t.Fatalf("a content being deleted was bound to uid %q", uid)
	}
	snap := getSnapshot(w, ns, "imported")
	if snap.Status == nil || snap.Status.Error == nil || !strings.Contains(ptr.Deref(snap.Status.Error.Message, ""), "precut") ||
		ptr.Deref(snap.Status.ReadyToUse, true) {
		t.Fatalf("VolumeSnapshot does not report the content being deleted: %+v", snap.Status)
	}
}

// TestContentDeletionIsDecidedOnTheLatestVersion: the sidecar decides to
// delete a terminating, never-bound content's backend snapshot on its cached
// copy; if the content was bound meanwhile (by another binder), the decision
// is stale and no DeleteSnapshot is sent.
func TestContentDeletionIsDecidedOnTheLatestVersion(t *testing.T) {
	w, n := terminatingPreProvisioned(t)
	n.w.Fill(n.kubeStores, n.snapStores) // the cache: never bound
	bound := getContent(w, "precut")
	bound.Spec.VolumeSnapshotRef.UID = "uid-imported"
	if _, err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Update(context.Background(), bound, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_ = n.ctrl.syncContent(context.Background(), "precut") // on the stale cache
	if n.csi.Count("DeleteSnapshot") != 0 {
		t.Fatalf("backend snapshot deleted on a stale copy of a content bound meanwhile (CSI calls %v)", n.csi.Calls())
	}
	_ = n.syncContent("precut")
	if n.csi.Count("DeleteSnapshot") != 0 || getContent(w, "precut") == nil {
		t.Fatalf("content bound to a live VolumeSnapshot lost its backend snapshot (CSI calls %v)", n.csi.Calls())
	}
}

// TestDynamicContentWithoutUIDIsRefused: a hand-made dynamic content whose
// volumeSnapshotRef has no uid would be cut under the CSI name "snapshot-",
// shared by every such content. It is refused, as upstream does, and once
// deleted it goes without any CSI call.
func TestDynamicContentWithoutUIDIsRefused(t *testing.T) {
	content := BuildContent(dynamicSnapshot("snap"), snapshotClass(), fakecsi.VolumeID("data"))
	content.Spec.VolumeSnapshotRef.UID = ""
	w := fakeapi.NewWorld(t, append(sourceObjects("node1"), content)...)
	n := startNode(t, w, "node1")
	n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
	_ = n.syncContent(content.Name)
	got := getContent(w, content.Name)
	if n.csi.Count("CreateSnapshot") != 0 || got.Status == nil || got.Status.Error == nil ||
		!strings.Contains(ptr.Deref(got.Status.Error.Message, ""), "uid") {
		t.Fatalf("content without a uid: CSI calls %v, status %+v", n.csi.Calls(), got.Status)
	}
	if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), content.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = n.syncContent(content.Name)
	}
	if getContent(w, content.Name) != nil || n.csi.Count("CreateSnapshot") != 0 {
		t.Fatalf("deleted content without a uid: stuck = %v, CSI calls %v", getContent(w, content.Name) != nil, n.csi.Calls())
	}
}

// TestMarkedContentGoesThoughTheCacheLags: the binder marks a content
// being-deleted once it sees its VolumeSnapshot being deleted; the mark can
// reach a node before the snapshot's deletion does (two watches, no order).
// The node then asks the API server instead of trusting its cache, and the
// backend snapshot goes with the VolumeSnapshot (Delete policy).
func TestMarkedContentGoesThoughTheCacheLags(t *testing.T) {
	content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "precut", Finalizers: []string{FinalizerContentBound},
		Annotations: map[string]string{AnnSnapshotBeingDeleted: "yes"}},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "imported", UID: "uid-imported"},
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(fakecsi.SnapshotID("s"))}}}
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "imported", UID: "uid-imported", Finalizers: []string{FinalizerSnapshotBound}},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To("precut")}}}
	w := fakeapi.NewWorld(t, content, snap)
	n := startNode(t, w, "node1")
	n.csi.AddSnapshot("s", "vol-x", map[string]string{topology.NodeKey: "node1"})
	ctx := context.Background()
	if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, "precut", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.w.Fill(n.kubeStores, n.snapStores) // the cache sees the marked content and a live snapshot
	if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "imported", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = n.ctrl.syncContent(ctx, "precut") // the snapshot's deletion has not reached the cache
	}
	if slices.Contains(n.csi.SnapshotIDs(), fakecsi.SnapshotID("s")) || getContent(w, "precut") != nil {
		t.Fatalf("backend snapshot or content kept though the VolumeSnapshot is being deleted (CSI calls %v)", n.csi.Calls())
	}
}
