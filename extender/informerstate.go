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

const indexByPending = "toposnap.io/pending-node"

// informerState answers from informer caches and, for PVs and capacities,
// from a volumeIndex kept by the informers' event handlers (it holds each
// PV's compiled node affinity): no API call happens on the request path.
type informerState struct {
	*volumeIndex
	nodes      corelisters.NodeLister
	claims     corelisters.PersistentVolumeClaimLister
	volumes    corelisters.PersistentVolumeLister
	classes    storagelisters.StorageClassLister
	claimIndex cache.Indexer
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
	index := newVolumeIndex()
	pvHandler, err := pvInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { putIf(obj, index.putVolume) },
		UpdateFunc: func(_, obj any) { putIf(obj, index.putVolume) },
		DeleteFunc: func(obj any) {
			if pv, ok := unwrap[*corev1.PersistentVolume](obj); ok {
				index.removeVolume(pv.Name)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch PVs: %w", err)
	}
	capHandler, err := capInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { putIf(obj, index.putCapacity) },
		UpdateFunc: func(_, obj any) { putIf(obj, index.putCapacity) },
		DeleteFunc: func(obj any) {
			if c, ok := unwrap[*storagev1.CSIStorageCapacity](obj); ok {
				index.removeCapacity(c.Namespace, c.Name)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch capacities: %w", err)
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
	nodeInformer := kube.Core().V1().Nodes().Informer()
	classInformer := kube.Storage().V1().StorageClasses().Informer()
	s := &informerState{
		volumeIndex: index,
		nodes:       kube.Core().V1().Nodes().Lister(), claims: kube.Core().V1().PersistentVolumeClaims().Lister(),
		volumes: kube.Core().V1().PersistentVolumes().Lister(), classes: kube.Storage().V1().StorageClasses().Lister(),
		claimIndex: claimInformer.GetIndexer(),
		synced: []cache.InformerSynced{pvHandler.HasSynced, claimInformer.HasSynced, capHandler.HasSynced,
			nodeInformer.HasSynced, classInformer.HasSynced},
	}
	if snap != nil {
		s.snapshots = snap.Snapshot().V1().VolumeSnapshots().Lister()
		s.contents = snap.Snapshot().V1().VolumeSnapshotContents().Lister()
		s.synced = append(s.synced, snap.Snapshot().V1().VolumeSnapshots().Informer().HasSynced,
			snap.Snapshot().V1().VolumeSnapshotContents().Informer().HasSynced)
	}
	return s, nil
}

// putIf hands obj to put when it is a T.
func putIf[T any](obj any, put func(T)) {
	if v, ok := obj.(T); ok {
		put(v)
	}
}

// unwrap returns the T in obj, looking inside a tombstone.
func unwrap[T any](obj any) (T, bool) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	v, ok := obj.(T)
	return v, ok
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
