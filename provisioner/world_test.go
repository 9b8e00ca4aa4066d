package provisioner

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/claimsource"
	"github.com/toposnap/toposnap/internal/fakeapi"
	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

const driver = "csi.toposnap.io"

// world is one cluster's API seen by one or more node provisioners, each
// with its own fake CSI driver.
type world struct {
	*fakeapi.World
	t *testing.T
}

func newWorld(t *testing.T, objects ...runtime.Object) *world {
	t.Helper()
	return &world{World: fakeapi.NewWorld(t, objects...), t: t}
}

func (w *world) create(obj runtime.Object) { w.t.Helper(); w.Create(obj) }

// node is one node's provisioner (a fresh one is a restarted process) and
// its driver.
type node struct {
	w          *world
	ctrl       *Controller
	csi        *fakecsi.Server
	kubeStores informers.SharedInformerFactory
	snapStores snapshotinformers.SharedInformerFactory
	holds      bool
}

func (h *node) Holds() bool { return h.holds }

// startNode starts a provisioner for name in region/zone with driver server.
func (w *world) startNode(name, zone string, server *fakecsi.Server, client csi.ControllerClient, holdsLease bool) *node {
	kubeInformers := informers.NewSharedInformerFactory(w.Kube, 0)
	snapInformers := snapshotinformers.NewSharedInformerFactory(w.Snaps, 0)
	segment := topology.Segment{topology.NodeKey: name, topology.ZoneKey: zone, topology.RegionKey: "r"}
	ctrl := NewController(Config{
		DriverName: driver, NodeName: name, NodeSegment: segment, Timeout: time.Second,
		Client: w.Kube, Snapshots: w.Snaps, CSI: client, Recorder: record.NewFakeRecorder(100),
		CapacityNamespace: "toposnap",
	}, kube.SameInformers(kubeInformers, snapInformers))
	n := &node{w: w, ctrl: ctrl, csi: server, kubeStores: kubeInformers, snapStores: snapInformers, holds: holdsLease}
	ctrl.zone = n
	n.refresh()
	return n
}

// refresh fills the node's caches with what the API holds now.
func (n *node) refresh() { n.w.t.Helper(); n.w.Fill(n.kubeStores, n.snapStores) }

// syncClaim refreshes the caches and syncs one claim, returning its error.
func (n *node) syncClaim(namespace, name string) error {
	n.refresh()
	return n.ctrl.syncClaim(context.Background(), namespace+"/"+name)
}

func (n *node) syncVolume(name string) error {
	n.refresh()
	return n.ctrl.syncVolume(context.Background(), name)
}

func (n *node) syncSource(key string) error {
	n.refresh()
	return n.ctrl.syncSource(context.Background(), key)
}

// Objects of a world.

func nodeObject(name, zone string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, topology.ZoneKey: zone, topology.RegionKey: "r"}}}
}

func classObject(name, scope string, mode storagev1.VolumeBindingMode) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: driver,
		Parameters: map[string]string{"scope": scope}, VolumeBindingMode: ptr.To(mode),
		ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimDelete)}
}

func claimObject(namespace, name, class, selectedNode string) *corev1.PersistentVolumeClaim {
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID("uid-" + namespace + "-" + name)},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}},
		},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending},
	}
	if selectedNode != "" {
		claim.Annotations = map[string]string{AnnSelectedNode: selectedNode}
	}
	return claim
}

func restoreFrom(claim *corev1.PersistentVolumeClaim, snapshot string) *corev1.PersistentVolumeClaim {
	claim.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: snapshot}
	return claim
}

// readySnapshot is a VolumeSnapshot bound to a ready content cut on node.
func readySnapshot(namespace, name, handle string, node string) (*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent) {
	uid := types.UID("uid-snap-" + namespace + "-" + name)
	content := "content-" + name
	snap := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: uid},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To(content)}},
		Status: &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To(content), ReadyToUse: ptr.To(true),
			RestoreSize: ptr.To(resource.MustParse("1Mi"))},
	}
	annotation, _ := topology.EncodeSegments([]topology.Segment{{topology.NodeKey: node}})
	contentObj := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: content, Annotations: map[string]string{topology.AnnAccessibleTopology: annotation}},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: namespace, Name: name, UID: uid},
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(handle)}},
		Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(handle), ReadyToUse: ptr.To(true)},
	}
	return snap, contentObj
}

// Reading the world.

func (w *world) claim(namespace, name string) *corev1.PersistentVolumeClaim {
	w.t.Helper()
	claim, err := w.Kube.CoreV1().PersistentVolumeClaims(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return claim
}

func (w *world) pvs() []corev1.PersistentVolume {
	w.t.Helper()
	list, err := w.Kube.CoreV1().PersistentVolumes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	return list.Items
}

func (w *world) snapshotFinalizers(namespace, name string) []string {
	w.t.Helper()
	snap, err := w.Snaps.SnapshotV1().VolumeSnapshots(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	return snap.Finalizers
}

// deleteClaim is `kubectl delete pvc`.
func (w *world) deleteClaim(namespace, name string) {
	w.t.Helper()
	if err := w.Kube.CoreV1().PersistentVolumeClaims(namespace).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

func hasFinalizer(obj metav1.Object, finalizer string) bool {
	return obj != nil && slices.Contains(obj.GetFinalizers(), finalizer)
}

type runtimeObject = runtime.Object

func snapshotSource(name string) claimsource.Source {
	return claimsource.Source{APIGroup: claimsource.SnapshotGroup, Kind: claimsource.KindSnapshot, Namespace: "tenant", Name: name}
}

// bind plays the PV controller: the claim binds to its PV.
func bind(t *testing.T, w *world, namespace, name string) {
	t.Helper()
	claim := w.claim(namespace, name)
	claim.Spec.VolumeName = PVName(claim)
	if _, err := w.Kube.CoreV1().PersistentVolumeClaims(namespace).Update(context.Background(), claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// failPVCreateOnce makes the next PV create fail, as an API hiccup would.
func failPVCreateOnce(w *world) {
	failed := false
	w.Kube.PrependReactor("create", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failed {
			return false, nil, nil
		}
		failed = true
		return true, nil, apierrors.NewServiceUnavailable("etcd is slow")
	})
}
