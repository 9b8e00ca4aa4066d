package extender

import (
	"fmt"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
)

const (
	indexByClass   = "toposnap.io/class-and-label"
	indexByPending = "toposnap.io/pending-node"
)

// informerState answers from informer caches and their indexes: no API
// call happens on the request path.
type informerState struct {
	nodes      corelisters.NodeLister
	claims     corelisters.PersistentVolumeClaimLister
	volumes    corelisters.PersistentVolumeLister
	classes    storagelisters.StorageClassLister
	pvIndex    cache.Indexer
	claimIndex cache.Indexer
	capIndex   cache.Indexer
	snapshots  snapshotlisters.VolumeSnapshotLister // nil without the snapshot CRDs
	contents   snapshotlisters.VolumeSnapshotContentLister
	synced     []cache.InformerSynced
}

// newInformerState registers informers and indexes; snapInformers may be nil
// when the cluster has no snapshot CRDs.
func newInformerState(kube informers.SharedInformerFactory, snap snapshotinformers.SharedInformerFactory) (*informerState, error) {
	pvInformer := kube.Core().V1().PersistentVolumes().Informer()
	claimInformer := kube.Core().V1().PersistentVolumeClaims().Informer()
	capInformer := kube.Storage().V1().CSIStorageCapacities().Informer()
	if err := pvInformer.AddIndexers(cache.Indexers{indexByClass: func(obj any) ([]string, error) {
		pv, ok := obj.(*corev1.PersistentVolume)
		if !ok {
			return nil, nil
		}
		return pvIndexKeys(pv), nil
	}}); err != nil {
		return nil, fmt.Errorf("index PVs: %w", err)
	}
	if err := claimInformer.AddIndexers(cache.Indexers{indexByPending: func(obj any) ([]string, error) {
		claim, ok := obj.(*corev1.PersistentVolumeClaim)
		if !ok || claim.Spec.VolumeName != "" || claim.Annotations[annSelectedNode] == "" {
			return nil, nil
		}
		return []string{claim.Annotations[annSelectedNode]}, nil
	}}); err != nil {
		return nil, fmt.Errorf("index claims: %w", err)
	}
	if err := capInformer.AddIndexers(cache.Indexers{indexByClass: func(obj any) ([]string, error) {
		capacity, ok := obj.(*storagev1.CSIStorageCapacity)
		if !ok {
			return nil, nil
		}
		return capacityIndexKeys(capacity), nil
	}}); err != nil {
		return nil, fmt.Errorf("index capacities: %w", err)
	}
	nodeInformer := kube.Core().V1().Nodes().Informer()
	classInformer := kube.Storage().V1().StorageClasses().Informer()
	s := &informerState{
		nodes: kube.Core().V1().Nodes().Lister(), claims: kube.Core().V1().PersistentVolumeClaims().Lister(),
		volumes: kube.Core().V1().PersistentVolumes().Lister(), classes: kube.Storage().V1().StorageClasses().Lister(),
		pvIndex: pvInformer.GetIndexer(), claimIndex: claimInformer.GetIndexer(), capIndex: capInformer.GetIndexer(),
		synced: []cache.InformerSynced{pvInformer.HasSynced, claimInformer.HasSynced, capInformer.HasSynced, nodeInformer.HasSynced, classInformer.HasSynced},
	}
	if snap != nil {
		s.snapshots = snap.Snapshot().V1().VolumeSnapshots().Lister()
		s.contents = snap.Snapshot().V1().VolumeSnapshotContents().Lister()
		s.synced = append(s.synced, snap.Snapshot().V1().VolumeSnapshots().Informer().HasSynced,
			snap.Snapshot().V1().VolumeSnapshotContents().Informer().HasSynced)
	}
	return s, nil
}

func (s *informerState) Node(name string) (*corev1.Node, bool) {
	n, err := s.nodes.Get(name)
	return n, err == nil
}

func (s *informerState) Claim(namespace, name string) (*corev1.PersistentVolumeClaim, bool) {
	c, err := s.claims.PersistentVolumeClaims(namespace).Get(name)
	return c, err == nil
}

func (s *informerState) Volume(name string) (*corev1.PersistentVolume, bool) {
	v, err := s.volumes.Get(name)
	return v, err == nil
}

func (s *informerState) Class(name string) (*storagev1.StorageClass, bool) {
	c, err := s.classes.Get(name)
	return c, err == nil
}

func (s *informerState) StaticCandidates(class string, node *corev1.Node) []*corev1.PersistentVolume {
	var out []*corev1.PersistentVolume
	for _, key := range lookupKeys(class, node) {
		objs, _ := s.pvIndex.ByIndex(indexByClass, key)
		for _, obj := range objs {
			if pv, ok := obj.(*corev1.PersistentVolume); ok {
				out = append(out, pv)
			}
		}
	}
	return dedupe(out)
}

func (s *informerState) Snapshot(namespace, name string) (*snapv1.VolumeSnapshot, bool) {
	if s.snapshots == nil {
		return nil, false
	}
	snap, err := s.snapshots.VolumeSnapshots(namespace).Get(name)
	return snap, err == nil
}

func (s *informerState) Content(name string) (*snapv1.VolumeSnapshotContent, bool) {
	if s.contents == nil {
		return nil, false
	}
	content, err := s.contents.Get(name)
	return content, err == nil
}

func (s *informerState) FreeCapacity(class string, node *corev1.Node) (int64, bool) {
	for _, key := range lookupKeys(class, node) {
		objs, _ := s.capIndex.ByIndex(indexByClass, key)
		for _, obj := range objs {
			if c, ok := obj.(*storagev1.CSIStorageCapacity); ok && selectsNode(c, node) {
				return c.Capacity.Value(), true
			}
		}
	}
	return 0, false
}

func (s *informerState) PendingOnNode(node string) []*corev1.PersistentVolumeClaim {
	objs, _ := s.claimIndex.ByIndex(indexByPending, node)
	out := make([]*corev1.PersistentVolumeClaim, 0, len(objs))
	for _, obj := range objs {
		if c, ok := obj.(*corev1.PersistentVolumeClaim); ok {
			out = append(out, c)
		}
	}
	return out
}
