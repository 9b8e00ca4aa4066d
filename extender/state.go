// Package extender is toposnap's kube-scheduler extender: it filters and
// scores nodes by where a pod's volumes can be: bound PVs' affinity, static
// PVs that would fit, the class's allowedTopologies, the summed capacity of a
// pod's claims per pool (minus claims already promised to a node), and where
// a restore's snapshot or a clone's source lives. Decisions are pure
// functions of a State (filter.go, prioritize.go); server.go is the HTTP edge.
package extender

import (
	"maps"
	"slices"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// State is the cluster as a filter decision sees it. Implementations are
// read-only and safe for concurrent use.
type State interface {
	// snapshot is the index of nodes, static PVs and capacities; a decision
	// takes it once, so it reads one consistent view.
	snapshot() *indexSnapshot
	Claim(namespace, name string) (*corev1.PersistentVolumeClaim, bool)
	Volume(name string) (*corev1.PersistentVolume, bool)
	Class(name string) (*storagev1.StorageClass, bool)
	Snapshot(namespace, name string) (*snapv1.VolumeSnapshot, bool)
	// SnapshotsServed is true while the snapshot API is served and its
	// caches are filled; when false, readiness says whether its state is
	// not known yet (restores wait) or it is absent (nothing is known about
	// where snapshots live: restores are not restricted).
	SnapshotsServed() bool
	Content(name string) (*snapv1.VolumeSnapshotContent, bool)
	// PendingOnNode lists claims the scheduler promised to node (annotation
	// volume.kubernetes.io/selected-node) that are not bound yet. Read live,
	// not from the snapshot: a burst of pods must see each other's claims.
	PendingOnNode(node string) []*corev1.PersistentVolumeClaim
	// PromiseTTL is how long such a promise holds its node's capacity
	// after it was made (0: for ever); see promiseHolds.
	PromiseTTL() time.Duration
	// readiness says what the state still waits for: core, while not
	// empty, is why nothing can be decided yet (its caches are filling);
	// snapshots, why it is not known yet where snapshots live.
	readiness() (core, snapshots string)
}

// MemState is a State held in maps: for tests and benchmarks. Call Index
// after filling the maps; after that it is read-only and safe to share.
type MemState struct {
	Nodes     map[string]*corev1.Node
	Claims    map[string]*corev1.PersistentVolumeClaim // "namespace/name"
	Volumes   map[string]*corev1.PersistentVolume
	Classes   map[string]*storagev1.StorageClass
	Snapshots map[string]*snapv1.VolumeSnapshot // "namespace/name"
	Contents  map[string]*snapv1.VolumeSnapshotContent
	Capacity  []*storagev1.CSIStorageCapacity
	// NoSnapshotAPI plays a cluster without the snapshot CRDs.
	NoSnapshotAPI bool
	// Loading and SnapshotsUnknown, when set, are what readiness says.
	Loading, SnapshotsUnknown string
	// PromiseExpiry is PromiseTTL's answer (0: promises never expire).
	PromiseExpiry time.Duration
	*volumeIndex
	byPending map[string][]*corev1.PersistentVolumeClaim
}

// Index builds MemState's secondary indexes; call after filling the maps.
func (m *MemState) Index() {
	m.volumeIndex = &volumeIndex{}
	pvs := make([]*corev1.PersistentVolume, 0, len(m.Volumes))
	for _, pv := range m.Volumes {
		pvs = append(pvs, pv)
	}
	m.rebuild(pvs, m.Capacity)
	m.rebuildNodes(slices.Collect(maps.Values(m.Nodes)))
	m.byPending = map[string][]*corev1.PersistentVolumeClaim{}
	for _, claim := range m.Claims {
		if node := claim.Annotations[annSelectedNode]; node != "" && claim.Spec.VolumeName == "" {
			m.byPending[node] = append(m.byPending[node], claim)
		}
	}
}

func (m *MemState) Claim(ns, name string) (*corev1.PersistentVolumeClaim, bool) {
	c, ok := m.Claims[ns+"/"+name]
	return c, ok
}
func (m *MemState) Volume(name string) (*corev1.PersistentVolume, bool) {
	v, ok := m.Volumes[name]
	return v, ok
}
func (m *MemState) Class(name string) (*storagev1.StorageClass, bool) {
	c, ok := m.Classes[name]
	return c, ok
}
func (m *MemState) Snapshot(ns, name string) (*snapv1.VolumeSnapshot, bool) {
	s, ok := m.Snapshots[ns+"/"+name]
	return s, ok
}
func (m *MemState) SnapshotsServed() bool { return !m.NoSnapshotAPI && m.SnapshotsUnknown == "" }
func (m *MemState) readiness() (core, snapshots string) {
	return m.Loading, m.SnapshotsUnknown
}
func (m *MemState) Content(name string) (*snapv1.VolumeSnapshotContent, bool) {
	c, ok := m.Contents[name]
	return c, ok
}
func (m *MemState) PendingOnNode(node string) []*corev1.PersistentVolumeClaim {
	return m.byPending[node]
}
func (m *MemState) PromiseTTL() time.Duration { return m.PromiseExpiry }
