package extender

import (
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/utils/ptr"
)

// Candidate is a static PV as matchStatic needs it on every node: its node
// affinity compiled once, when it is indexed (compiling costs ten times what
// matching does, and a request matches thousands), and the facts it checks
// read out of the object, so a node's candidates are one contiguous walk.
type Candidate struct {
	// Read for every candidate on every node: kept together, the size
	// ending the first cache line, and nothing here points into the PV,
	// whose object is elsewhere on the heap.
	claimed   bool // has a claimRef
	available bool // phase Available
	deleting  bool
	// indexExact: the affinity is exactly one In expression on the label it
	// is filed under, so a node found through that label matches it.
	indexExact bool
	modes      accessModes
	size       resource.Quantity
	mode       corev1.PersistentVolumeMode // the package's constant for Filesystem and Block
	attributes string                      // volumeAttributesClassName
	name       string
	// Read for candidates that pass the above.
	PV       *corev1.PersistentVolume
	affinity *nodeaffinity.LazyErrorNodeSelector // nil: no required affinity
	class    string
}

// accessModes is a set of access modes as bits, so that "does the PV offer
// every mode the claim asks for" (volumehelpers.CheckAccessModes) is one
// AND per candidate instead of two nested loops over the objects.
type accessModes uint8

func modesOf(modes []corev1.PersistentVolumeAccessMode) accessModes {
	var set accessModes
	for _, mode := range modes {
		switch mode {
		case corev1.ReadWriteOnce:
			set |= 1
		case corev1.ReadOnlyMany:
			set |= 2
		case corev1.ReadWriteMany:
			set |= 4
		case corev1.ReadWriteOncePod:
			set |= 8
		default:
			set |= unknownMode
		}
	}
	return set
}

// unknownMode marks a mode the API does not define; sets holding one are
// compared by volumehelpers.CheckAccessModes itself.
const unknownMode accessModes = 16

// offers reports whether a PV offering s serves a claim asking for want.
func (s accessModes) offers(want accessModes, claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) bool {
	if (s|want)&unknownMode != 0 {
		return volumehelpers.CheckAccessModes(claim, pv)
	}
	return want&^s == 0
}

// NewCandidate reads what matchStatic checks out of pv.
func NewCandidate(pv *corev1.PersistentVolume) Candidate {
	c := Candidate{PV: pv, name: pv.Name, affinity: compileAffinity(pv), class: volumehelpers.GetPersistentVolumeClass(pv),
		size: pv.Spec.Capacity[corev1.ResourceStorage], mode: volumeMode(pv.Spec.VolumeMode),
		attributes: ptr.Deref(pv.Spec.VolumeAttributesClassName, ""), claimed: pv.Spec.ClaimRef != nil,
		available: pv.Status.Phase == corev1.VolumeAvailable, deleting: pv.DeletionTimestamp != nil,
		modes: modesOf(pv.Spec.AccessModes)}
	if c.affinity != nil {
		terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
		if len(terms) == 1 && len(terms[0].MatchExpressions) == 1 && len(terms[0].MatchFields) == 0 &&
			terms[0].MatchExpressions[0].Operator == corev1.NodeSelectorOpIn {
			_, err := nodeaffinity.NewNodeSelector(pv.Spec.NodeAffinity.Required)
			c.indexExact = err == nil
		}
	}
	return c
}

// volumeMode is a PV's or claim's volume mode, Filesystem when unset, as
// the package's constant where it is one: comparing two modes is then a
// pointer comparison, not a read of each object's string.
func volumeMode(mode *corev1.PersistentVolumeMode) corev1.PersistentVolumeMode {
	switch {
	case mode == nil || *mode == corev1.PersistentVolumeFilesystem:
		return corev1.PersistentVolumeFilesystem
	case *mode == corev1.PersistentVolumeBlock:
		return corev1.PersistentVolumeBlock
	}
	return *mode
}

func compileAffinity(pv *corev1.PersistentVolume) *nodeaffinity.LazyErrorNodeSelector {
	if pv == nil || pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return nil
	}
	return nodeaffinity.NewLazyErrorNodeSelector(pv.Spec.NodeAffinity.Required)
}

// Reaches answers what volumehelpers.CheckNodeAffinity(pv, node.Labels)
// == nil would: the node is matched by labels only, as that function does.
// probe is a node carrying only the labels, no name, so that matchFields
// never apply, as in CheckNodeAffinity.
func (c Candidate) Reaches(probe *corev1.Node) bool {
	return reaches(c.affinity, probe)
}

func reaches(affinity *nodeaffinity.LazyErrorNodeSelector, probe *corev1.Node) bool {
	if affinity == nil {
		return true
	}
	ok, err := affinity.Match(probe)
	return ok && err == nil
}

// The index of static PVs and capacities is an immutable snapshot, swapped
// atomically when rebuilt: a request reads one consistent view without
// locks, and a class's part of it is looked up once per request, not once
// per node.
//
// A PV whose node affinity is one term with an In expression can only match
// nodes carrying one of that expression's key=value labels, so it is filed
// under that label key and each value; any other PV under the class's
// wildcard. A node then needs one lookup per indexed label key of the class
// instead of a walk over every PV of the class: the difference between 1 ms
// and 1 s at 5,000 nodes. Each PV is filed under one label key only, and a
// node has one value per key, so no PV is visited twice for a node.
type indexSnapshot struct {
	static   map[string]*StaticClass // by class
	prebound map[preboundKey][]Candidate
	capacity map[string]*capacityClass // by class
	nodes    *nodeTable
	joined   map[string]*classNodes // static and capacity by class, per node of nodes
}

type preboundKey struct{ class, namespace, name string }

// filed is one class's objects of a kind: those that may suit any node (the
// wildcard), and the rest under one label key and its values.
type filed[T any] struct {
	wildcard []T
	byLabel  []labelValues[T]
}

type labelValues[T any] struct {
	label   string
	byValue map[string][]T
}

// add files v under label=values, or under the wildcard for label "".
func (f *filed[T]) add(label string, values []string, v T) {
	if label == "" {
		f.wildcard = append(f.wildcard, v)
		return
	}
	i := 0
	for i < len(f.byLabel) && f.byLabel[i].label != label {
		i++
	}
	if i == len(f.byLabel) {
		f.byLabel = append(f.byLabel, labelValues[T]{label, map[string][]T{}})
	}
	for _, value := range values {
		f.byLabel[i].byValue[value] = append(f.byLabel[i].byValue[value], v)
	}
}

// filedList is one list of filed objects; byLabel says it was found
// through one of the node's labels (not the wildcard).
type filedList[T any] struct {
	byLabel bool
	list    []T
}

// forNode appends to out the lists that may suit a node with these labels:
// a superset, the caller checks each object fully.
func (f *filed[T]) forNode(nodeLabels map[string]string, out []filedList[T]) []filedList[T] {
	if f == nil {
		return out
	}
	if len(f.wildcard) > 0 {
		out = append(out, filedList[T]{list: f.wildcard})
	}
	for i := range f.byLabel {
		if value, ok := nodeLabels[f.byLabel[i].label]; ok {
			if list := f.byLabel[i].byValue[value]; len(list) > 0 {
				out = append(out, filedList[T]{byLabel: true, list: list})
			}
		}
	}
	return out
}

// StaticClass is the index of one class's static PVs.
type StaticClass = filed[Candidate]

// CandidateList is one list of a StaticClass.
type CandidateList = filedList[Candidate]

// filing is where a PV goes in its class's index: label "" is the wildcard.
func filing(pv *corev1.PersistentVolume) (label string, values []string) {
	affinity := pv.Spec.NodeAffinity
	if affinity == nil || affinity.Required == nil || len(affinity.Required.NodeSelectorTerms) != 1 {
		return "", nil
	}
	for _, expr := range affinity.Required.NodeSelectorTerms[0].MatchExpressions {
		if expr.Operator == corev1.NodeSelectorOpIn && len(expr.Values) > 0 && expr.Key != "" {
			return expr.Key, expr.Values
		}
	}
	return "", nil
}

// capacityClass is one class's CSIStorageCapacities, filed like PVs by
// the first of their match labels (selectsNode checks the rest).
type capacityClass = filed[indexedCapacity]

// indexedCapacity is a CSIStorageCapacity with its sizes read out; exact:
// its topology is the one label it is filed under, so a node found through
// that label is selected by it.
type indexedCapacity struct {
	object  *storagev1.CSIStorageCapacity
	free    int64
	largest int64 // the largest volume it says fits: maximumVolumeSize, else capacity
	exact   bool
	known   bool // capacity is set
}

func (c *indexedCapacity) selects(node *corev1.Node, foundByLabel bool) bool {
	if !c.known {
		return false
	}
	return foundByLabel && c.exact || selectsNode(c.object, node)
}

// buildIndex indexes pvs and capacities. Candidates of PVs that previous
// already holds (same object) are reused, not compiled again.
func buildIndex(pvs []*corev1.PersistentVolume, capacities []*storagev1.CSIStorageCapacity, previous *indexSnapshot) *indexSnapshot {
	reuse := map[*corev1.PersistentVolume]Candidate{}
	if previous != nil {
		for _, class := range previous.static {
			for _, c := range class.wildcard {
				reuse[c.PV] = c
			}
			for _, byLabel := range class.byLabel {
				for _, list := range byLabel.byValue {
					for _, c := range list {
						reuse[c.PV] = c
					}
				}
			}
		}
	}
	snapshot := &indexSnapshot{static: map[string]*StaticClass{}, prebound: map[preboundKey][]Candidate{}, capacity: map[string]*capacityClass{}}
	for _, pv := range pvs {
		candidate, ok := reuse[pv]
		if !ok {
			candidate = NewCandidate(pv)
		}
		class := snapshot.static[candidate.class]
		if class == nil {
			class = &StaticClass{}
			snapshot.static[candidate.class] = class
		}
		label, values := filing(pv)
		class.add(label, values, candidate)
		if ref := pv.Spec.ClaimRef; ref != nil {
			key := preboundKey{candidate.class, ref.Namespace, ref.Name}
			snapshot.prebound[key] = append(snapshot.prebound[key], candidate)
		}
	}
	// Several PVs pre-bound to one claim: FindMatchingVolume answers with the
	// first in its list's order, which is arbitrary; name order makes ours
	// deterministic.
	for _, list := range snapshot.prebound {
		sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	}
	for _, c := range capacities {
		entry := indexedCapacity{object: c, known: c.Capacity != nil}
		if c.Capacity != nil {
			entry.free, entry.largest = c.Capacity.Value(), c.Capacity.Value()
		}
		if c.MaximumVolumeSize != nil {
			entry.largest = c.MaximumVolumeSize.Value()
		}
		class := snapshot.capacity[c.StorageClassName]
		if class == nil {
			class = &capacityClass{}
			snapshot.capacity[c.StorageClassName] = class
		}
		if c.NodeTopology == nil || len(c.NodeTopology.MatchExpressions) > 0 || len(c.NodeTopology.MatchLabels) == 0 {
			class.add("", nil, entry)
			continue
		}
		entry.exact = len(c.NodeTopology.MatchLabels) == 1
		first := slices.Min(slices.Collect(maps.Keys(c.NodeTopology.MatchLabels)))
		class.add(first, []string{c.NodeTopology.MatchLabels[first]}, entry)
	}
	return snapshot
}

// selectsNode reports whether a capacity's topology selects the node.
func selectsNode(capacity *storagev1.CSIStorageCapacity, node *corev1.Node) bool {
	if capacity.Capacity == nil || capacity.NodeTopology == nil {
		return false
	}
	if len(capacity.NodeTopology.MatchExpressions) == 0 {
		for k, v := range capacity.NodeTopology.MatchLabels {
			if node.Labels[k] != v {
				return false
			}
		}
		return true
	}
	selector, err := metav1.LabelSelectorAsSelector(capacity.NodeTopology)
	return err == nil && selector.Matches(labels.Set(node.Labels))
}

// volumeIndex holds the current snapshot; both State implementations embed
// it. Safe for concurrent use.
type volumeIndex struct {
	current atomic.Pointer[indexSnapshot]
	writer  sync.Mutex // one rebuild at a time, so none loses another's part
}

// snapshot is the current index: a request takes it once and reads only it.
func (v *volumeIndex) snapshot() *indexSnapshot {
	if s := v.current.Load(); s != nil {
		return s
	}
	return &indexSnapshot{}
}

// rebuild indexes pvs and capacities and makes that the current snapshot,
// with the current node table.
func (v *volumeIndex) rebuild(pvs []*corev1.PersistentVolume, capacities []*storagev1.CSIStorageCapacity) {
	v.writer.Lock()
	defer v.writer.Unlock()
	previous := v.current.Load()
	next := buildIndex(pvs, capacities, previous)
	if previous != nil {
		next.nodes = previous.nodes
	}
	next.joined = joinClasses(next.nodes, next.static, next.capacity)
	v.current.Store(next)
}

// rebuildNodes indexes nodes and makes that the current snapshot, with the
// current PVs and capacities.
func (v *volumeIndex) rebuildNodes(nodes []*corev1.Node) {
	v.writer.Lock()
	defer v.writer.Unlock()
	next := indexSnapshot{}
	if previous := v.current.Load(); previous != nil {
		next = *previous
	}
	next.nodes = buildNodeTable(nodes)
	next.joined = joinClasses(next.nodes, next.static, next.capacity)
	v.current.Store(&next)
}

// preBoundTo lists the PVs of class whose claimRef names namespace/name.
func (s *indexSnapshot) preBoundTo(class, namespace, name string) []Candidate {
	return s.prebound[preboundKey{class, namespace, name}]
}

// nodeFree is what a class's published capacities say of one node's pool.
type nodeFree struct {
	bytes   int64 // free space
	largest int64 // the largest volume that fits
	known   bool  // some capacity selects the node
}

// freeCapacity reads the published capacities of a class whose topology
// selects the node. Where several do (a stale object beside a fresh one,
// or another publisher's), the most generous counts, as the scheduler's
// VolumeBinding accepts a claim that any of them has room for.
func freeCapacity(c *capacityClass, node *corev1.Node) nodeFree {
	var free nodeFree
	if c == nil {
		return free
	}
	var buf [4]filedList[indexedCapacity]
	for _, group := range c.forNode(node.Labels, buf[:0]) {
		for i := range group.list {
			if capacity := &group.list[i]; capacity.selects(node, group.byLabel) {
				free.bytes, free.largest = max(free.bytes, capacity.free), max(free.largest, capacity.largest)
				free.known = true
			}
		}
	}
	return free
}
