package snapshotter

import (
	"context"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/fakeapi"
	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/kube"
)

// centralBinder is toposnap-controller's binder: whole-cluster caches, no
// CSI driver, no node.
type centralBinder struct {
	w          *fakeapi.World
	ctrl       *Controller
	kubeStores informers.SharedInformerFactory
	snapStores snapshotinformers.SharedInformerFactory
}

func startBinder(w *fakeapi.World) *centralBinder {
	kubeInformers := informers.NewSharedInformerFactory(w.Kube, 0)
	snapInformers := snapshotinformers.NewSharedInformerFactory(w.Snaps, 0)
	ctrl := NewController(Config{DriverName: driver, Binder: true, CommonController: true, Timeout: time.Second,
		Snapshots: w.Snaps, Client: w.Kube, Recorder: record.NewFakeRecorder(100)}, kube.SameInformers(kubeInformers, snapInformers))
	return &centralBinder{w: w, ctrl: ctrl, kubeStores: kubeInformers, snapStores: snapInformers}
}

func (b *centralBinder) syncSnapshot(namespace, name string) error {
	b.w.Fill(b.kubeStores, b.snapStores)
	return b.ctrl.syncSnapshot(context.Background(), namespace+"/"+name)
}

// TestCentralBinderBindsWhatNoNodeBinds: the central binder has no driver to
// ask where a snapshot lives. It binds a pre-provisioned snapshot whose
// content names no place yet (it used to ask a nil driver and crash, so
// every replica crash-looped), creates the content of a dynamic snapshot of
// a node-scope volume on any node, and lets a deleted snapshot go.
func TestCentralBinderBindsWhatNoNodeBinds(t *testing.T) {
	content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "precut"},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentRetain,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "imported"},
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To("sn-0123456789abcdef-0123456789abcdef")}}}
	imported := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "imported", UID: "uid-imported"},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To("precut")}}}
	objects := append(sourceObjects("node7"), snapshotClass(), dynamicSnapshot("snap"), content, imported)
	w := fakeapi.NewWorld(t, objects...)
	b := startBinder(w)
	for range 3 {
		if err := b.syncSnapshot(ns, "imported"); err != nil {
			t.Fatal(err)
		}
		if err := b.syncSnapshot(ns, "snap"); err != nil {
			t.Fatal(err)
		}
	}
	if ref := getContent(w, "precut").Spec.VolumeSnapshotRef; ref.UID != "uid-imported" {
		t.Errorf("pre-provisioned content bound to uid %q, want uid-imported", ref.UID)
	}
	dynamic := getContent(w, "snapcontent-uid-snap")
	if dynamic == nil || ptr.Deref(dynamic.Spec.Source.VolumeHandle, "") != fakecsi.VolumeID("data") {
		t.Fatalf("no content cut for the dynamic snapshot of node7's volume: %+v", dynamic)
	}

	// Deleted: the binder lets the snapshot go once its content is released.
	snap := getSnapshot(w, ns, "imported")
	if snap.Finalizers == nil {
		t.Fatalf("imported snapshot has no bound finalizer to release: %+v", snap.ObjectMeta)
	}
	if err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(context.Background(), "imported", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = b.syncSnapshot(ns, "imported")
	}
	if got := getSnapshot(w, ns, "imported"); got != nil {
		t.Errorf("deleted snapshot still there, finalizers %v", got.Finalizers)
	}
}
