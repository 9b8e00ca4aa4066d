package snapshotter

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/fakeapi"
	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

const (
	driver = "csi.toposnap.io"
	ns     = "tenant"
)

// node is one node's snapshotter (with the common half) and its driver.
type node struct {
	w          *fakeapi.World
	ctrl       *Controller
	csi        *fakecsi.Server
	kubeStores informers.SharedInformerFactory
	snapStores snapshotinformers.SharedInformerFactory
}

func startNode(t *testing.T, w *fakeapi.World, name string) *node {
	server, client := fakecsi.Start(t)
	kubeInformers := informers.NewSharedInformerFactory(w.Kube, 0)
	snapInformers := snapshotinformers.NewSharedInformerFactory(w.Snaps, 0)
	ctrl := NewController(Config{
		DriverName: driver, NodeName: name, NodeSegment: topology.Segment{topology.NodeKey: name}, Timeout: time.Second,
		CommonController: true, Snapshots: w.Snaps, CSI: client, Recorder: record.NewFakeRecorder(100),
	}, kube.SameInformers(kubeInformers, snapInformers))
	return &node{w: w, ctrl: ctrl, csi: server, kubeStores: kubeInformers, snapStores: snapInformers}
}

func (n *node) syncContent(name string) error {
	n.w.Fill(n.kubeStores, n.snapStores)
	return n.ctrl.syncContent(context.Background(), name)
}

func (n *node) syncSnapshot(namespace, name string) error {
	n.w.Fill(n.kubeStores, n.snapStores)
	return n.ctrl.syncSnapshot(context.Background(), namespace+"/"+name)
}

// settle runs both halves until nothing changes, as the queues would.
func (n *node) settle(t *testing.T, namespace, snapshot, content string) {
	t.Helper()
	for range 5 {
		_ = n.syncSnapshot(namespace, snapshot)
		_ = n.syncContent(content)
	}
}

// A source claim bound to a node-scope PV on node.
func sourceObjects(node string) []runtime.Object {
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "data", UID: "uid-data"},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-data"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	return []runtime.Object{claim, sourcePV(node)}
}

func sourcePV(node string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-data"},
		Spec: corev1.PersistentVolumeSpec{
			ClaimRef:               &corev1.ObjectReference{Namespace: ns, Name: "data", UID: "uid-data"},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: fakecsi.VolumeID("data")}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.NodeKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		}}
}

func snapshotClass() *snapv1.VolumeSnapshotClass {
	return &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "snaps", Annotations: map[string]string{AnnDefaultClass: "true"}},
		Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
}

func dynamicSnapshot(name string) *snapv1.VolumeSnapshot {
	return &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("data")}}}
}

func getSnapshot(w *fakeapi.World, namespace, name string) *snapv1.VolumeSnapshot {
	snap, err := w.Snaps.SnapshotV1().VolumeSnapshots(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return snap
}

func getContent(w *fakeapi.World, name string) *snapv1.VolumeSnapshotContent {
	content, err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return content
}

// TestSnapshotOutlivesItsSource: a snapshot is deleted, with its backend
// snapshot, whatever was deleted before it: its PVC, its PV, both.
func TestSnapshotOutlivesItsSource(t *testing.T) {
	cases := []struct {
		name   string
		delete func(t *testing.T, w *fakeapi.World)
	}{
		{"source kept", func(*testing.T, *fakeapi.World) {}},
		{"source PVC and PV deleted first", func(t *testing.T, w *fakeapi.World) {
			ctx := context.Background()
			if err := w.Kube.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := w.Kube.CoreV1().PersistentVolumes().Delete(ctx, "pv-data", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := fakeapi.NewWorld(t, append(sourceObjects("node1"), snapshotClass(), dynamicSnapshot("snap"))...)
			n := startNode(t, w, "node1")
			other := startNode(t, w, "node2")
			n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
			content := "snapcontent-uid-snap"
			n.settle(t, ns, "snap", content)
			if snap := getSnapshot(w, ns, "snap"); snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) {
				t.Fatalf("snapshot never became ready: %+v", snap.Status)
			}
			tc.delete(t, w)
			if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(context.Background(), "snap", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			other.settle(t, ns, "snap", content) // another node's snapshotter must not act
			if len(n.csi.SnapshotIDs()) != 1 {
				t.Fatal("another node deleted the snapshot it does not hold")
			}
			n.settle(t, ns, "snap", content)
			if snap := getSnapshot(w, ns, "snap"); snap != nil {
				t.Fatalf("snapshot stuck with finalizers %v", snap.Finalizers)
			}
			if c := getContent(w, content); c != nil {
				t.Fatalf("content stuck with finalizers %v", c.Finalizers)
			}
			if ids := n.csi.SnapshotIDs(); len(ids) != 0 {
				t.Fatalf("backend snapshots leaked: %v", ids)
			}
		})
	}
}

// TestContentDeletedBeforeItsFirstCut: a content whose source went away
// before any node cut it had nothing cut: it is released without CSI calls.
func TestContentDeletedBeforeItsFirstCut(t *testing.T) {
	content := BuildContent(dynamicSnapshot("snap"), snapshotClass(), fakecsi.VolumeID("data"))
	w := fakeapi.NewWorld(t, content)
	if err := w.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), content.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, w, "node1")
	if err := n.syncContent(content.Name); err != nil {
		t.Fatal(err)
	}
	if c := getContent(w, content.Name); c != nil {
		t.Fatalf("content stuck with finalizers %v", c.Finalizers)
	}
	if calls := n.csi.Calls(); len(calls) != 0 {
		t.Fatalf("CSI calls for a content never cut: %v", calls)
	}
}

// TestContentIsStampedBeforeItsCut: the location is on the content before
// CreateSnapshot runs, so a crash after the cut cannot orphan the snapshot.
func TestContentIsStampedBeforeItsCut(t *testing.T) {
	content := BuildContent(dynamicSnapshot("snap"), snapshotClass(), fakecsi.VolumeID("data"))
	w := fakeapi.NewWorld(t, append(sourceObjects("node1"), dynamicSnapshot("snap"), content)...)
	n := startNode(t, w, "node1")
	n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
	var stampedAtCut bool
	n.csi.Fail("CreateSnapshot", fakecsi.Fault{Err: context.DeadlineExceeded, After: true})
	_ = n.syncContent(content.Name)
	stamped := getContent(w, content.Name)
	stampedAtCut = stamped.Annotations[topology.AnnAccessibleTopology] != ""
	if !stampedAtCut || n.csi.Count("CreateSnapshot") != 1 {
		t.Fatalf("after a failed cut: annotations %v, calls %v", stamped.Annotations, n.csi.Calls())
	}
}

// TestPreProvisionedBinding: a VolumeSnapshot binds only to a content whose
// volumeSnapshotRef names it; a tenant cannot take another's content.
func TestPreProvisionedBinding(t *testing.T) {
	cases := []struct {
		name     string
		ref      corev1.ObjectReference
		wantBind bool
	}{
		{"content for this snapshot, uid to fill", corev1.ObjectReference{Namespace: ns, Name: "imported"}, true},
		{"content for this snapshot, uid matches", corev1.ObjectReference{Namespace: ns, Name: "imported", UID: "uid-imported"}, true},
		{"content for another namespace's snapshot", corev1.ObjectReference{Namespace: "victim", Name: "imported"}, false},
		{"content for another snapshot name", corev1.ObjectReference{Namespace: ns, Name: "other"}, false},
		{"content bound to an earlier snapshot of this name", corev1.ObjectReference{Namespace: ns, Name: "imported", UID: "uid-old"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "precut"},
				Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentRetain, VolumeSnapshotRef: tc.ref,
					Source: snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(fakecsi.SnapshotID("s"))}}}
			snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "imported", UID: "uid-imported"},
				Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To("precut")}}}
			w := fakeapi.NewWorld(t, content, snap)
			n := startNode(t, w, "node1")
			n.csi.AddSnapshot("s", "vol-x", map[string]string{topology.NodeKey: "node1"})
			n.settle(t, ns, "imported", "precut")
			got := getSnapshot(w, ns, "imported")
			bound := got.Status != nil && ptr.Deref(got.Status.BoundVolumeSnapshotContentName, "") == "precut" && ptr.Deref(got.Status.ReadyToUse, false)
			if bound != tc.wantBind {
				t.Fatalf("bound = %v, want %v (status %+v)", bound, tc.wantBind, got.Status)
			}
			if ref := getContent(w, "precut").Spec.VolumeSnapshotRef; !tc.wantBind && ref.UID != tc.ref.UID {
				t.Fatalf("someone else's content was rebound to uid %q", ref.UID)
			}
		})
	}
}

// TestSnapshotWaitsForItsRestores: a snapshot a restore still reads keeps
// its content and backend snapshot until the restore is done, whichever
// restore-source finalizer marks it: upstream's, or toposnap's own.
func TestSnapshotWaitsForItsRestores(t *testing.T) {
	for _, finalizer := range []string{FinalizerSnapshotAsSource, FinalizerRestoreSource} {
		t.Run(finalizer, func(t *testing.T) {
			w := fakeapi.NewWorld(t, append(sourceObjects("node1"), snapshotClass(), dynamicSnapshot("snap"))...)
			n := startNode(t, w, "node1")
			n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
			content := "snapcontent-uid-snap"
			n.settle(t, ns, "snap", content)
			snap := getSnapshot(w, ns, "snap")
			snap.Finalizers = append(snap.Finalizers, finalizer)
			if _, err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Update(context.Background(), snap, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(context.Background(), "snap", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			n.settle(t, ns, "snap", content)
			if c := getContent(w, content); c == nil || c.DeletionTimestamp != nil || len(n.csi.SnapshotIDs()) != 1 {
				t.Fatalf("content deleted under a restore: %+v, backend %v", c, n.csi.SnapshotIDs())
			}
			snap = getSnapshot(w, ns, "snap")
			snap.Finalizers = slices.DeleteFunc(snap.Finalizers, func(f string) bool { return f == finalizer })
			if _, err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Update(context.Background(), snap, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			n.settle(t, ns, "snap", content)
			if getSnapshot(w, ns, "snap") != nil || len(n.csi.SnapshotIDs()) != 0 {
				t.Fatalf("once the restore was done the snapshot was not deleted: backend %v", n.csi.SnapshotIDs())
			}
		})
	}
}

// TestStaleCacheNeverReleasesASnapshot: a snapshotter whose cache does not
// have the content yet (created a moment ago, or the cache is listing again
// after an API server restart) must not let the snapshot go without it: its
// backend snapshot would leak with an orphaned content.
func TestStaleCacheNeverReleasesASnapshot(t *testing.T) {
	w := fakeapi.NewWorld(t, append(sourceObjects("node1"), snapshotClass(), dynamicSnapshot("snap"))...)
	n := startNode(t, w, "node1")
	n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
	content := "snapcontent-uid-snap"
	n.settle(t, ns, "snap", content)
	if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(context.Background(), "snap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, who := range []*node{startNode(t, w, "node2"), n} {
		who.w.Fill(who.kubeStores, who.snapStores)
		store := who.snapStores.Snapshot().V1().VolumeSnapshotContents().Informer().GetStore()
		if err := store.Delete(getContent(w, content)); err != nil {
			t.Fatal(err)
		}
		if err := who.ctrl.syncSnapshot(context.Background(), ns+"/snap"); err != nil && !errors.Is(err, kube.ErrRequeue) {
			t.Fatal(err)
		}
		if snap := getSnapshot(w, ns, "snap"); snap == nil || getContent(w, content).DeletionTimestamp != nil && who != n {
			t.Fatalf("%s: snapshot released (or its content deleted) on a cache that lacked the content", who.ctrl.cfg.NodeName)
		}
	}
	n.settle(t, ns, "snap", content)
	if getSnapshot(w, ns, "snap") != nil || getContent(w, content) != nil || len(n.csi.SnapshotIDs()) != 0 {
		t.Fatalf("snapshot not deleted with its content: backend %v", n.csi.SnapshotIDs())
	}
}

// TestOrphanedContentIsDeleted: a Delete-policy content whose VolumeSnapshot
// is gone (released by a crash, or deleted past its finalizer) is deleted
// with its backend snapshot by the node holding it; one whose snapshot the
// cache merely lacks, or a Retain one, is kept.
func TestOrphanedContentIsDeleted(t *testing.T) {
	cases := []struct {
		name       string
		policy     snapv1.DeletionPolicy
		snapshot   string // "gone", "replaced" (same name, new uid), "uncached" (in the API, not the cache)
		wantDelete bool
	}{
		{"snapshot gone", snapv1.VolumeSnapshotContentDelete, "gone", true},
		{"snapshot replaced by another of its name", snapv1.VolumeSnapshotContentDelete, "replaced", true},
		{"snapshot only missing from the cache", snapv1.VolumeSnapshotContentDelete, "uncached", false},
		{"snapshot gone, Retain", snapv1.VolumeSnapshotContentRetain, "gone", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			class := snapshotClass()
			class.DeletionPolicy = tc.policy
			w := fakeapi.NewWorld(t, append(sourceObjects("node1"), class, dynamicSnapshot("snap"))...)
			n := startNode(t, w, "node1")
			n.csi.AddVolume("data", map[string]string{topology.NodeKey: "node1"})
			content := "snapcontent-uid-snap"
			n.settle(t, ns, "snap", content)
			// The snapshot goes without its finalizer being honoured.
			snap := getSnapshot(w, ns, "snap")
			snap.Finalizers = nil
			if _, err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Update(context.Background(), snap, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			switch tc.snapshot {
			case "gone", "replaced":
				if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(context.Background(), "snap", metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.snapshot == "replaced" {
				again := dynamicSnapshot("snap")
				again.UID = "uid-snap-2"
				if _, err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(context.Background(), again, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			n.w.Fill(n.kubeStores, n.snapStores)
			if tc.snapshot == "uncached" {
				store := n.snapStores.Snapshot().V1().VolumeSnapshots().Informer().GetStore()
				if err := store.Delete(getSnapshot(w, ns, "snap")); err != nil {
					t.Fatal(err)
				}
			}
			_ = n.ctrl.syncContent(context.Background(), content)
			for range 3 {
				_ = n.syncContent(content)
			}
			deleted := getContent(w, content) == nil && len(n.csi.SnapshotIDs()) == 0
			if deleted != tc.wantDelete {
				t.Fatalf("content deleted = %v, want %v (backend %v)", deleted, tc.wantDelete, n.csi.SnapshotIDs())
			}
			if !tc.wantDelete && (getContent(w, content) == nil || getContent(w, content).DeletionTimestamp != nil) {
				t.Fatal("a content that is still wanted was deleted")
			}
		})
	}
}
