package extender

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"

	"github.com/toposnap/toposnap/internal/topology"
)

// The node table is the index snapshot's view of the nodes: looked up by
// name once per node and request, and grouping nodes into places.
//
// A place is a distinct set of zone and region labels (GA and legacy). Most
// of what a filter checks depends on nothing else: a class's
// allowedTopologies over zones, a zone volume's affinity, a snapshot's
// zone, and the "node is in zone b" of every reason. Such a check is made
// once per place and request, on a probe carrying only the place's labels,
// which answers exactly as the node would, since the check reads no other
// label. A cluster has a handful of places and thousands of nodes.

// placeKeys are the labels a place is made of.
var placeKeys = [...]string{topology.ZoneKey, topology.RegionKey, topology.LegacyZoneKey, topology.LegacyRegionKey}

// nodeTable is the nodes of one index snapshot.
type nodeTable struct {
	byName map[string]tableNode
	nodes  []*corev1.Node // by index
	places []place
	byZone map[string][]string // node names by zone, for zone pools
}

type tableNode struct {
	node   *corev1.Node
	name   string            // the node's name, in the table's one copy of all names
	labels map[string]string // the node's, read without touching the Node
	index  int32             // in nodes, and in each classNodes
	place  int32             // index in places
}

// place is one set of place labels, as a probe node carrying only them.
type place struct {
	probe    *corev1.Node
	location topology.Location // zone and region, for reasons
}

// buildNodeTable indexes nodes by name and place.
func buildNodeTable(nodes []*corev1.Node) *nodeTable {
	table := &nodeTable{byName: make(map[string]tableNode, len(nodes)), nodes: make([]*corev1.Node, 0, len(nodes)),
		byZone: map[string][]string{}}
	placeOf := map[[len(placeKeys) * 2]string]int32{}
	// All names in one string: the map's keys then sit together instead of
	// in each Node object, and comparing a request's name with a key costs
	// no cache miss into a Node.
	var all strings.Builder
	for _, node := range nodes {
		all.WriteString(node.Name)
	}
	names, offset := all.String(), 0
	for _, node := range nodes {
		name := names[offset : offset+len(node.Name)]
		offset += len(node.Name)
		var key [len(placeKeys) * 2]string // value and presence of each place key
		placeLabels := map[string]string{}
		for i, label := range placeKeys {
			if value, ok := node.Labels[label]; ok {
				key[2*i], key[2*i+1] = value, "set"
				placeLabels[label] = value
			}
		}
		index, ok := placeOf[key]
		if !ok {
			index = int32(len(table.places))
			placeOf[key] = index
			table.places = append(table.places, place{probe: &corev1.Node{}, location: topology.LocationFromLabels("", placeLabels)})
			table.places[index].probe.Labels = placeLabels
		}
		table.byName[name] = tableNode{node: node, name: name, labels: node.Labels, index: int32(len(table.nodes)), place: index}
		table.nodes = append(table.nodes, node)
		if zone := table.places[index].location.Zone; zone != "" {
			table.byZone[zone] = append(table.byZone[zone], node.Name)
		}
	}
	return table
}

// classNodes is one class's static PVs and capacities resolved for every
// node of the table when either changes, so that a request reads a node's
// share by index, next to the other nodes' shares, instead of through two
// map lookups per claim into objects all over the heap: at 5,000 nodes the
// cache misses were most of a request's time.
type classNodes struct {
	staticStart []int32         // node i's lists are static[staticStart[i]:staticStart[i+1]]
	static      []CandidateList // nil when the class has no static PVs
	free        []nodeFree      // by node index; nil when the class has no capacities
}

// joinClasses resolves each class's index for every node of the table.
func joinClasses(table *nodeTable, static map[string]*StaticClass, capacity map[string]*capacityClass) map[string]*classNodes {
	joined := map[string]*classNodes{}
	if table == nil {
		return joined
	}
	class := func(name string) *classNodes {
		if joined[name] == nil {
			joined[name] = &classNodes{}
		}
		return joined[name]
	}
	for name, index := range static {
		c := class(name)
		// The lists found through a node's labels are copied, in node order,
		// into one array: a node's candidates sit together, not in as many
		// small allocations as the index made while filing.
		var buf [4]CandidateList
		copies := 0
		for _, node := range table.nodes {
			for _, group := range index.forNode(node.Labels, buf[:0]) {
				if group.byLabel {
					copies += len(group.list)
				}
			}
		}
		candidates := make([]Candidate, 0, copies)
		c.staticStart = make([]int32, 0, len(table.nodes)+1)
		for _, node := range table.nodes {
			c.staticStart = append(c.staticStart, int32(len(c.static)))
			for _, group := range index.forNode(node.Labels, buf[:0]) {
				if group.byLabel {
					start := len(candidates)
					candidates = append(candidates, group.list...)
					group.list = candidates[start:len(candidates):len(candidates)]
				}
				c.static = append(c.static, group)
			}
		}
		c.staticStart = append(c.staticStart, int32(len(c.static)))
	}
	for name, index := range capacity {
		c := class(name)
		c.free = make([]nodeFree, len(table.nodes))
		for i, node := range table.nodes {
			c.free[i] = freeCapacity(index, node)
		}
	}
	return joined
}

// staticAt is the lists of static PVs that may suit node i.
func (c *classNodes) staticAt(i int32) []CandidateList {
	if c == nil || c.static == nil {
		return nil
	}
	return c.static[c.staticStart[i]:c.staticStart[i+1]]
}

// freeAt is what published capacities say of node i's pool.
func (c *classNodes) freeAt(i int32) nodeFree {
	if c == nil || c.free == nil {
		return nodeFree{}
	}
	return c.free[i]
}

// nodeRefs are a request's node names and, for each, its table entry
// (with node nil when the table does not hold it).
type nodeRefs struct {
	names []string
	nodes []tableNode
}

// resolve looks every name up.
func (t *nodeTable) resolve(names []string) nodeRefs {
	refs := nodeRefs{names: names}
	refs.lookUp(t)
	return refs
}

// nodeBytes looks a node up by its name's bytes, without making a string.
func (t *nodeTable) nodeBytes(name []byte) (tableNode, bool) {
	if t == nil {
		return tableNode{}, false
	}
	n, ok := t.byName[string(name)]
	return n, ok
}

// node looks a node up by name.
func (t *nodeTable) node(name string) (tableNode, bool) {
	if t == nil {
		return tableNode{}, false
	}
	n, ok := t.byName[name]
	return n, ok
}

// placeOnly reports whether every key is a place key.
func placeOnly(keys ...string) bool {
	for _, key := range keys {
		if !slices.Contains(placeKeys[:], key) {
			return false
		}
	}
	return true
}

// termsPlaceOnly: allowedTopologies terms that read only place labels.
func termsPlaceOnly(terms []corev1.TopologySelectorTerm) bool {
	for _, term := range terms {
		for _, expr := range term.MatchLabelExpressions {
			if !placeOnly(expr.Key) {
				return false
			}
		}
	}
	return true
}

// affinityPlaceOnly: a PV's required node affinity that reads only place
// labels (matchFields never match a probe, node or place alike).
func affinityPlaceOnly(pv *corev1.PersistentVolume) bool {
	if pv == nil || pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return true
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if !placeOnly(expr.Key) {
				return false
			}
		}
	}
	return true
}

// segmentsPlaceOnly: segments that name only place labels.
func segmentsPlaceOnly(segments []topology.Segment) bool {
	for _, segment := range segments {
		for key := range segment {
			if !placeOnly(key) {
				return false
			}
		}
	}
	return true
}

// placeMemo remembers a yes/no check per place for one request, when the
// check reads only place labels (perPlace); otherwise it asks every time.
type placeMemo struct {
	perPlace bool
	answers  []uint8 // by place: 0 not asked yet, 1 yes, 2 no
}

func newPlaceMemo(perPlace bool, places int) placeMemo {
	if !perPlace {
		return placeMemo{}
	}
	return placeMemo{perPlace: true, answers: make([]uint8, places)}
}

// check answers check(probe) for a node at place p: with the place's probe,
// once per place, when the check reads only place labels; with the node's
// own probe otherwise.
func (m *placeMemo) check(p int32, places []place, nodeProbe *corev1.Node, check func(probe *corev1.Node) bool) bool {
	if !m.perPlace {
		return check(nodeProbe)
	}
	if m.answers[p] == 0 {
		m.answers[p] = 2
		if check(places[p].probe) {
			m.answers[p] = 1
		}
	}
	return m.answers[p] == 1
}

// affinityMemo is a placeMemo for a compiled PV affinity.
func affinityMemo(pv *corev1.PersistentVolume, affinity *nodeaffinity.LazyErrorNodeSelector, places int) placeMemo {
	return newPlaceMemo(affinity != nil && affinityPlaceOnly(pv), places)
}
