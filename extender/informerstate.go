package extender

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
)

const indexByPending = "toposnap.io/pending-node"

// informerState answers from informer caches and, for PVs and capacities,
// from an index snapshot rebuilt from them after changes (see Maintain):
// no API call happens on the request path.
type informerState struct {
	*volumeIndex
	nodes      corelisters.NodeLister
	claims     corelisters.PersistentVolumeClaimLister
	volumes    corelisters.PersistentVolumeLister
	capacities storagelisters.CSIStorageCapacityLister
	classes    storagelisters.StorageClassLister
	claimIndex cache.Indexer
	// snapshots follows the snapshot API: its listers while it is served
	// and cached, and why not otherwise.
	snapshots *kube.SnapshotCaches[snapshotListers]
	synced    []cache.InformerSynced
	// loaded is set once the caches above synced and the index was built
	// from them: until then no request can be decided.
	loaded atomic.Bool
	// changed is signalled when volumesChanged or nodesChanged was set.
	changed        chan struct{}
	volumesChanged atomic.Bool // PVs or capacities changed since the last rebuild
	nodesChanged   atomic.Bool
	promiseTTL     time.Duration
}

// snapshotListers are the snapshot API's caches a decision reads.
type snapshotListers struct {
	snapshots snapshotlisters.VolumeSnapshotLister
	contents  snapshotlisters.VolumeSnapshotContentLister
}

// registerSnapshotInformers creates, on a new factory, the snapshot
// informers the extender reads.
func registerSnapshotInformers(factory snapshotinformers.SharedInformerFactory) (snapshotListers, []cache.SharedIndexInformer) {
	snapshots, contents := factory.Snapshot().V1().VolumeSnapshots(), factory.Snapshot().V1().VolumeSnapshotContents()
	return snapshotListers{snapshots: snapshots.Lister(), contents: contents.Lister()},
		[]cache.SharedIndexInformer{snapshots.Informer(), contents.Informer()}
}

// newInformerState registers informers and indexes on factory, and reads
// snapshots from snapshots' caches while the snapshot API is served.
func newInformerState(factory informers.SharedInformerFactory, snapshots *kube.SnapshotCaches[snapshotListers]) (*informerState, error) {
	pvInformer := factory.Core().V1().PersistentVolumes().Informer()
	claimInformer := factory.Core().V1().PersistentVolumeClaims().Informer()
	capInformer := factory.Storage().V1().CSIStorageCapacities().Informer()
	nodeInformer := factory.Core().V1().Nodes().Informer()
	s := &informerState{volumeIndex: &volumeIndex{}, changed: make(chan struct{}, 1), snapshots: snapshots}
	s.volumesChanged.Store(true)
	s.nodesChanged.Store(true)
	for _, watched := range []struct {
		informer cache.SharedIndexInformer
		flag     *atomic.Bool
	}{{pvInformer, &s.volumesChanged}, {capInformer, &s.volumesChanged}, {nodeInformer, &s.nodesChanged}} {
		flag := watched.flag
		if _, err := watched.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { s.markChanged(flag) },
			UpdateFunc: func(any, any) { s.markChanged(flag) },
			DeleteFunc: func(any) { s.markChanged(flag) },
		}); err != nil {
			return nil, fmt.Errorf("watch PVs, capacities and nodes: %w", err)
		}
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
	classInformer := factory.Storage().V1().StorageClasses().Informer()
	s.nodes, s.claims = factory.Core().V1().Nodes().Lister(), factory.Core().V1().PersistentVolumeClaims().Lister()
	s.volumes, s.classes = factory.Core().V1().PersistentVolumes().Lister(), factory.Storage().V1().StorageClasses().Lister()
	s.capacities, s.claimIndex = factory.Storage().V1().CSIStorageCapacities().Lister(), claimInformer.GetIndexer()
	s.synced = []cache.InformerSynced{pvInformer.HasSynced, claimInformer.HasSynced, capInformer.HasSynced,
		nodeInformer.HasSynced, classInformer.HasSynced}
	return s, nil
}

// Load waits until the caches synced, builds the index from them and
// marks the state loaded; false if ctx ended first.
func (s *informerState) Load(ctx context.Context) bool {
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return false
	}
	s.rebuildNow()
	s.loaded.Store(true)
	klog.InfoS("Cluster state loaded: answering requests")
	return true
}

func (s *informerState) readiness() (core, snapshots string) {
	if !s.loaded.Load() {
		core = "waiting for the caches of nodes, claims, PVs, StorageClasses and CSIStorageCapacities to fill (is the API server reachable?)"
	}
	return core, s.snapshots.Waiting()
}

func (s *informerState) markChanged(flag *atomic.Bool) {
	flag.Store(true)
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// rebuildEvery bounds how often the index is rebuilt under a stream of
// changes; a change waits at most this long to be seen, or ten times the
// last rebuild's duration where that is longer (10,000 PVs take ~30 ms), so
// rebuilding never takes more than a tenth of a core. Nodes and volumes are
// rebuilt apart: node status updates, the steadiest stream in a large
// cluster, rebuild only the node table.
const rebuildEvery = 100 * time.Millisecond

// Maintain rebuilds the index after changes, coalescing bursts, until ctx
// ends. Call rebuildNow once after the caches synced, then Maintain.
func (s *informerState) Maintain(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
		}
		took := s.rebuildNow()
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(rebuildEvery, 10*took)):
		}
	}
}

// rebuildNow rebuilds what changed from the caches and says how long it
// took.
func (s *informerState) rebuildNow() time.Duration {
	start := time.Now()
	if s.nodesChanged.Swap(false) {
		nodes, err := s.nodes.List(labels.Everything())
		if err != nil {
			klog.ErrorS(err, "List nodes from cache")
			s.nodesChanged.Store(true)
		} else {
			s.rebuildNodes(nodes)
			klog.V(4).InfoS("Node table rebuilt", "nodes", len(nodes), "duration", time.Since(start))
		}
	}
	if s.volumesChanged.Swap(false) {
		volumesStart := time.Now()
		pvs, err := s.volumes.List(labels.Everything())
		if err != nil {
			klog.ErrorS(err, "List PVs from cache")
			s.volumesChanged.Store(true)
			return time.Since(start)
		}
		capacities, err := s.capacities.List(labels.Everything())
		if err != nil {
			klog.ErrorS(err, "List CSIStorageCapacities from cache")
			s.volumesChanged.Store(true)
			return time.Since(start)
		}
		s.rebuild(pvs, capacities)
		klog.V(4).InfoS("Index rebuilt", "pvs", len(pvs), "capacities", len(capacities), "duration", time.Since(volumesStart))
	}
	return time.Since(start)
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
	listers, ok := s.snapshots.Current()
	if !ok {
		return nil, false
	}
	snap, err := listers.snapshots.VolumeSnapshots(namespace).Get(name)
	return snap, err == nil
}

func (s *informerState) SnapshotsServed() bool {
	_, ok := s.snapshots.Current()
	return ok
}

func (s *informerState) Content(name string) (*snapv1.VolumeSnapshotContent, bool) {
	listers, ok := s.snapshots.Current()
	if !ok {
		return nil, false
	}
	content, err := listers.contents.Get(name)
	return content, err == nil
}

func (s *informerState) PromiseTTL() time.Duration { return s.promiseTTL }

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
