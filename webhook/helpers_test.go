package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snaplisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

// Zones of the test cluster: nodes are in zoneB, as in the seed's demo.
const (
	zoneB     = "cn-hangzhou-b"
	zoneD     = "cn-hangzhou-d"
	otherCSI  = "other.csi.example.com"
	namespace = "app"
)

// newState is a State over objects, read through the same listers as in
// production, with no API fallback.
func newState(t testing.TB, objects ...runtime.Object) State {
	t.Helper()
	indexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	classes, nodes, claims, snapshots, contents, snapshotClasses := indexer(), indexer(), indexer(), indexer(), indexer(), indexer()
	for _, object := range objects {
		var target cache.Indexer
		switch object.(type) {
		case *storagev1.StorageClass:
			target = classes
		case *corev1.Node:
			target = nodes
		case *corev1.PersistentVolumeClaim:
			target = claims
		case *snapv1.VolumeSnapshot:
			target = snapshots
		case *snapv1.VolumeSnapshotContent:
			target = contents
		case *snapv1.VolumeSnapshotClass:
			target = snapshotClasses
		default:
			t.Fatalf("newState: unexpected %T", object)
		}
		if err := target.Add(object); err != nil {
			t.Fatal(err)
		}
	}
	snapshotListers := SnapshotListers{
		Snapshots:       snaplisters.NewVolumeSnapshotLister(snapshots),
		Contents:        snaplisters.NewVolumeSnapshotContentLister(contents),
		SnapshotClasses: snaplisters.NewVolumeSnapshotClassLister(snapshotClasses),
	}
	return NewState(Listers{
		StorageClasses: storagelisters.NewStorageClassLister(classes),
		Nodes:          corelisters.NewNodeLister(nodes),
		Claims:         corelisters.NewPersistentVolumeClaimLister(claims),
		Snapshots:      func() (SnapshotListers, bool) { return snapshotListers, true },
	}, nil, nil)
}

// brokenState fails every lookup, as an API fallback that cannot connect.
type brokenState struct{}

var errBroken = errors.New("connection refused")

func (brokenState) StorageClass(context.Context, string) (*storagev1.StorageClass, error) {
	return nil, errBroken
}
func (brokenState) StorageClasses() ([]*storagev1.StorageClass, error) { return nil, errBroken }
func (brokenState) Nodes() ([]*corev1.Node, error)                     { return nil, errBroken }
func (brokenState) Claim(context.Context, string, string) (*corev1.PersistentVolumeClaim, error) {
	return nil, errBroken
}
func (brokenState) VolumeSnapshot(context.Context, string, string) (*snapv1.VolumeSnapshot, error) {
	return nil, errBroken
}
func (brokenState) VolumeSnapshotContent(context.Context, string) (*snapv1.VolumeSnapshotContent, error) {
	return nil, errBroken
}
func (brokenState) VolumeSnapshotClasses() ([]*snapv1.VolumeSnapshotClass, error) {
	return nil, errBroken
}
func (brokenState) Ready() error { return nil }

// node is a node in zone, labelled with the GA keys and its hostname.
func node(name, zone string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelHostname: name, topology.ZoneKey: zone, topology.RegionKey: "cn-hangzhou",
	}}}
}

// seedNodes are the seed demo's three nodes, all in zoneB.
func seedNodes() []*corev1.Node {
	return []*corev1.Node{node("master", zoneB), node("node1", zoneB), node("node2", zoneB)}
}

// storageClass is a class of provisioner, allowed in zones (none: anywhere).
func storageClass(name, provisioner string, zones ...string) *storagev1.StorageClass {
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner}
	if len(zones) > 0 {
		class.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: topology.ZoneKey, Values: zones},
		}}}
	}
	return class
}

// withMode sets the class's volumeBindingMode.
func withMode(class *storagev1.StorageClass, mode storagev1.VolumeBindingMode) *storagev1.StorageClass {
	class.VolumeBindingMode = &mode
	return class
}

// claim is a claim in namespace of class requesting size.
func claim(name, class, size string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse(size),
			}},
		},
	}
}

// restoring makes c restore the VolumeSnapshot name of apiGroup.
func restoring(c *corev1.PersistentVolumeClaim, apiGroup, name string) *corev1.PersistentVolumeClaim {
	c.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(apiGroup), Kind: "VolumeSnapshot", Name: name}
	return c
}

// cloning makes c clone the claim name.
func cloning(c *corev1.PersistentVolumeClaim, name string) *corev1.PersistentVolumeClaim {
	c.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: name}
	return c
}

// readySnapshot is a ready snapshot in namespace bound to content, of restoreSize.
func readySnapshot(name, content, restoreSize string) *snapv1.VolumeSnapshot {
	size := resource.MustParse(restoreSize)
	return &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("data")}},
		Status: &snapv1.VolumeSnapshotStatus{
			BoundVolumeSnapshotContentName: ptr.To(content), ReadyToUse: ptr.To(true), RestoreSize: &size,
		},
	}
}

// snapshotContent is a content of driver restorable in segments (nil: no annotation).
func snapshotContent(name, driver string, segments ...topology.Segment) *snapv1.VolumeSnapshotContent {
	content := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			Source: snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr.To("vol-1")},
		},
	}
	if segments != nil {
		value, err := topology.EncodeSegments(segments)
		if err != nil {
			panic(err)
		}
		content.Annotations = map[string]string{topology.AnnAccessibleTopology: value}
	}
	return content
}

// snapshotClass is a VolumeSnapshotClass of driver, the default if isDefault.
func snapshotClass(name, driver string, isDefault bool) *snapv1.VolumeSnapshotClass {
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if isDefault {
		class.Annotations = map[string]string{AnnDefaultSnapshotClass: "true"}
	}
	return class
}

// objects turns nodes into the runtime.Objects newState takes.
func objects(nodes []*corev1.Node, more ...runtime.Object) []runtime.Object {
	out := make([]runtime.Object, 0, len(nodes)+len(more))
	for _, n := range nodes {
		out = append(out, n)
	}
	return append(out, more...)
}

// applyPatch applies a JSONPatch to object as the API server would and
// returns the result.
func applyPatch[T any](t *testing.T, object *T, patch []PatchOperation) *T {
	t.Helper()
	original, err := json.Marshal(object)
	if err != nil {
		t.Fatal(err)
	}
	encoded, err := json.Marshal(patch)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := jsonpatch.DecodePatch(encoded)
	if err != nil {
		t.Fatalf("invalid JSONPatch %s: %v", encoded, err)
	}
	patched, err := decoded.Apply(original)
	if err != nil {
		t.Fatalf("apply JSONPatch %s: %v", encoded, err)
	}
	var result T
	if err := json.Unmarshal(patched, &result); err != nil {
		t.Fatal(err)
	}
	return &result
}
