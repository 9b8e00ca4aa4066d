package fakeapi

import (
	"context"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// World is one cluster's API for a controller test: the core and snapshot
// clientsets, both with Install's semantics.
type World struct {
	T     testing.TB
	Kube  *fake.Clientset
	Snaps *snapfake.Clientset
}

// NewWorld makes a World holding objects.
func NewWorld(t testing.TB, objects ...runtime.Object) *World {
	t.Helper()
	w := &World{T: t, Kube: fake.NewClientset(), Snaps: snapfake.NewSimpleClientset()} //nolint:staticcheck // the snapshot client is generated without apply configurations: it has no NewClientset
	Install(w.Kube)
	Install(w.Snaps)
	for _, obj := range objects {
		w.Create(obj)
	}
	return w
}

// Create stores an object through the API.
func (w *World) Create(obj runtime.Object) {
	w.T.Helper()
	ctx, opts := context.Background(), metav1.CreateOptions{}
	var err error
	switch o := obj.(type) {
	case *corev1.PersistentVolumeClaim:
		_, err = w.Kube.CoreV1().PersistentVolumeClaims(o.Namespace).Create(ctx, o, opts)
	case *corev1.PersistentVolume:
		_, err = w.Kube.CoreV1().PersistentVolumes().Create(ctx, o, opts)
	case *corev1.Node:
		_, err = w.Kube.CoreV1().Nodes().Create(ctx, o, opts)
	case *storagev1.StorageClass:
		_, err = w.Kube.StorageV1().StorageClasses().Create(ctx, o, opts)
	case *snapv1.VolumeSnapshot:
		_, err = w.Snaps.SnapshotV1().VolumeSnapshots(o.Namespace).Create(ctx, o, opts)
	case *snapv1.VolumeSnapshotContent:
		_, err = w.Snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, o, opts)
	case *snapv1.VolumeSnapshotClass:
		_, err = w.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, o, opts)
	default:
		w.T.Fatalf("fakeapi cannot create %T", obj)
	}
	if err != nil {
		w.T.Fatal(err)
	}
}

// Fill replaces the caches of the factories' informers with what the API
// holds now: a controller's view after its watches caught up. The
// factories are never started.
func (w *World) Fill(kube informers.SharedInformerFactory, snaps snapshotinformers.SharedInformerFactory) {
	w.T.Helper()
	ctx, all := context.Background(), metav1.ListOptions{}
	claims, err := w.Kube.CoreV1().PersistentVolumeClaims("").List(ctx, all)
	w.replace(kube.Core().V1().PersistentVolumeClaims().Informer().GetStore(), items(claims.Items), err)
	pvs, err := w.Kube.CoreV1().PersistentVolumes().List(ctx, all)
	w.replace(kube.Core().V1().PersistentVolumes().Informer().GetStore(), items(pvs.Items), err)
	nodes, err := w.Kube.CoreV1().Nodes().List(ctx, all)
	w.replace(kube.Core().V1().Nodes().Informer().GetStore(), items(nodes.Items), err)
	classes, err := w.Kube.StorageV1().StorageClasses().List(ctx, all)
	w.replace(kube.Storage().V1().StorageClasses().Informer().GetStore(), items(classes.Items), err)
	snapshots, err := w.Snaps.SnapshotV1().VolumeSnapshots("").List(ctx, all)
	w.replace(snaps.Snapshot().V1().VolumeSnapshots().Informer().GetStore(), items(snapshots.Items), err)
	contents, err := w.Snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, all)
	w.replace(snaps.Snapshot().V1().VolumeSnapshotContents().Informer().GetStore(), items(contents.Items), err)
	snapClasses, err := w.Snaps.SnapshotV1().VolumeSnapshotClasses().List(ctx, all)
	w.replace(snaps.Snapshot().V1().VolumeSnapshotClasses().Informer().GetStore(), items(snapClasses.Items), err)
}

func (w *World) replace(store cache.Store, list []any, err error) {
	w.T.Helper()
	if err != nil {
		w.T.Fatal(err)
	}
	if err := store.Replace(list, ""); err != nil {
		w.T.Fatal(err)
	}
}

func items[T any, P interface {
	*T
	runtime.Object
}](list []T) []any {
	out := make([]any, 0, len(list))
	for i := range list {
		out = append(out, P(&list[i]))
	}
	return out
}
