package extender

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/claimsource"
	"github.com/toposnap/toposnap/internal/topology"
)

const (
	annSelectedNode = "volume.kubernetes.io/selected-node"
	// annBindCompleted marks a claim the PV controller finished binding.
	annBindCompleted = "pv.kubernetes.io/bind-completed"
	noProvisioner    = "kubernetes.io/no-provisioner"
)

// podClaim is one of a pod's claims, resolved once per request with all
// that does not depend on the node.
type podClaim struct {
	claim       *corev1.PersistentVolumeClaim
	class       *storagev1.StorageClass // nil for claims bound without a class
	pv          *corev1.PersistentVolume
	affinity    *nodeaffinity.LazyErrorNodeSelector // the bound PV's
	key         string                              // "namespace/name", for messages
	request     resource.Quantity
	mode        corev1.PersistentVolumeMode // requested, Filesystem by default
	attributes  string                      // requested volumeAttributesClassName
	prebound    []Candidate                 // PVs of the class whose claimRef names this claim
	static      *StaticClass                // the class's static PVs
	modes       accessModes                 // requested access modes
	selector    labels.Selector             // the claim's selector for static PVs
	selectorErr error
	source      sourceCheck
	// promised: the scheduler already chose selectedNode for this unbound
	// claim (annotation volume.kubernetes.io/selected-node, even if empty):
	// only that node may provision it, and static PVs are out of the game.
	selectedNode string
	promised     bool
}

// Filter decides, for each candidate node, whether the pod's volumes can be
// there. It never errors: "no node fits" is a normal answer; nodes whose
// topology cannot change go to FailedAndUnresolvableNodes, nodes short of
// capacity (which can change) to FailedNodes. NodeNames is never nil.
//
// Reasons name the claim, the class and the mismatch but not the node (the
// answer is keyed by node): kube-scheduler counts identical reasons, so a
// FailedScheduling event over 5,000 nodes reads "4500 node(s) ... zone b"
// rather than listing 4,500 messages.
func Filter(state State, driver string, pod *corev1.Pod, nodeNames []string) extenderv1.ExtenderFilterResult {
	result := extenderv1.ExtenderFilterResult{
		NodeNames:                  &[]string{},
		FailedNodes:                extenderv1.FailedNodesMap{},
		FailedAndUnresolvableNodes: extenderv1.FailedNodesMap{},
	}
	if pod == nil {
		result.Error = "request has no pod"
		return result
	}
	claims, problem := resolveClaims(state, pod)
	if problem != "" {
		for _, name := range nodeNames {
			result.FailedAndUnresolvableNodes[name] = problem
		}
		return result
	}
	run := &filterRun{state: state, driver: driver, own: ownClaims(pod), claims: claims, reasons: map[reasonKey]string{}}
	result.FailedAndUnresolvableNodes = make(extenderv1.FailedNodesMap, len(nodeNames))
	fits := make([]string, 0, len(nodeNames))
	for _, name := range nodeNames {
		node, ok := state.Node(name)
		if !ok {
			result.FailedNodes[name] = fmt.Sprintf("node %s is not known to the extender yet", name)
			continue
		}
		verdict := run.checkNode(node)
		switch {
		case verdict.unresolvable != "":
			result.FailedAndUnresolvableNodes[name] = verdict.unresolvable
		case verdict.short != "":
			result.FailedNodes[name] = verdict.short
		default:
			fits = append(fits, name)
		}
	}
	result.NodeNames = &fits
	return result
}

// resolveClaims finds the pod's claims, their classes, bound PVs and
// sources. A problem that no node can fix is returned as a message for
// every node.
func resolveClaims(state State, pod *corev1.Pod) ([]podClaim, string) {
	var claims []podClaim
	for _, volume := range pod.Spec.Volumes {
		name := ""
		switch {
		case volume.PersistentVolumeClaim != nil:
			name = volume.PersistentVolumeClaim.ClaimName
		case volume.Ephemeral != nil:
			name = pod.Name + "-" + volume.Name
		default:
			continue
		}
		key := pod.Namespace + "/" + name
		claim, ok := state.Claim(pod.Namespace, name)
		if !ok {
			return nil, fmt.Sprintf("pvc %s not found", key)
		}
		switch {
		case claim.DeletionTimestamp != nil:
			return nil, fmt.Sprintf("pvc %s is being deleted", key)
		case claim.Status.Phase == corev1.ClaimLost:
			return nil, fmt.Sprintf("pvc %s lost its PV %s; bind it to a PV again or recreate it", key, claim.Spec.VolumeName)
		case claim.Spec.VolumeName != "" && !metav1.HasAnnotation(claim.ObjectMeta, annBindCompleted):
			return nil, fmt.Sprintf("pvc %s names PV %s but the PV controller has not bound them yet; wait for it to bind", key, claim.Spec.VolumeName)
		}
		pc := podClaim{claim: claim, key: key, request: claim.Spec.Resources.Requests[corev1.ResourceStorage]}
		if className := volumehelpers.GetPersistentVolumeClaimClass(claim); className != "" {
			pc.class, _ = state.Class(className)
		}
		pc.selectedNode, pc.promised = claim.Annotations[annSelectedNode]
		if claim.Spec.VolumeName != "" {
			pv, ok := state.Volume(claim.Spec.VolumeName)
			if !ok {
				return nil, fmt.Sprintf("pvc %s is bound to PV %s, which does not exist", key, claim.Spec.VolumeName)
			}
			pc.pv, pc.affinity = pv, compileAffinity(pv)
		} else {
			switch {
			case pc.class == nil:
				return nil, fmt.Sprintf("pvc %s: StorageClass %q not found", key, volumehelpers.GetPersistentVolumeClaimClass(claim))
			case pc.class.VolumeBindingMode == nil || *pc.class.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer:
				return nil, fmt.Sprintf("pvc %s is unbound and its class %s binds Immediately; wait for it to bind", key, pc.class.Name)
			}
			pc.mode, pc.attributes = corev1.PersistentVolumeFilesystem, ptr.Deref(claim.Spec.VolumeAttributesClassName, "")
			if claim.Spec.VolumeMode != nil {
				pc.mode = *claim.Spec.VolumeMode
			}
			pc.prebound = state.PreBound(pc.class.Name, claim.Namespace, claim.Name)
			pc.static, pc.modes = state.Static(pc.class.Name), modesOf(claim.Spec.AccessModes)
			if claim.Spec.Selector != nil {
				pc.selector, pc.selectorErr = metav1.LabelSelectorAsSelector(claim.Spec.Selector)
			}
			pc.source = resolveSource(state, &pc)
		}
		claims = append(claims, pc)
	}
	// Static PVs go to the smallest claims first, as the scheduler's
	// VolumeBinding does: a small claim must not take the one PV a larger
	// claim of the same pod could use when a smaller PV would do.
	sort.SliceStable(claims, func(i, j int) bool {
		if (claims[i].pv == nil) != (claims[j].pv == nil) {
			return claims[i].pv != nil
		}
		return claims[i].pv == nil && claims[i].request.Cmp(claims[j].request) < 0
	})
	return claims, ""
}

type verdict struct {
	unresolvable string // topology: no scheduling change fixes it
	short        string // capacity: may change
}

// filterRun is one filter request: the pod's resolved claims and the
// reasons already worded, shared by nodes in the same place.
type filterRun struct {
	state   State
	driver  string
	own     map[string]bool
	claims  []podClaim
	reasons map[reasonKey]string
	probe   corev1.Node // reused: the node under check, labels only
	// zoneReserved memoizes reserved for zone pools, by zone.
	zoneReserved map[string]int64
}

type reasonKind uint8

const (
	reasonBoundPV reasonKind = iota
	reasonNoStaticPV
	reasonAllowedTopologies
	reasonSource
	reasonSelector
	reasonPromised
)

// reasonKey identifies a reason: which claim, what kind, and where the
// node is (the only node-dependent part of any reason's words).
type reasonKey struct {
	claim        int
	kind         reasonKind
	zone, region string
}

// reason words a mismatch once per claim, kind and place.
func (r *filterRun) reason(claim int, kind reasonKind, node *corev1.Node, word func(where string) string) string {
	location := topology.LocationFromLabels(node.Name, node.Labels)
	key := reasonKey{claim, kind, location.Zone, location.Region}
	if text, ok := r.reasons[key]; ok {
		return text
	}
	text := word(describeWhere(location))
	r.reasons[key] = text
	return text
}

// checkNode applies, in order, the in-tree VolumeBinding rules and then
// toposnap's extras to one node.
func (r *filterRun) checkNode(node *corev1.Node) verdict {
	r.probe.Labels = node.Labels
	probe := &r.probe
	var excludedBuf [4]string
	excluded := excludedBuf[:0]
	var needs []poolNeed
	for i := range r.claims {
		pc := &r.claims[i]
		if pc.pv != nil {
			if !reaches(pc.affinity, probe) {
				return verdict{unresolvable: r.reason(i, reasonBoundPV, node, func(where string) string {
					return fmt.Sprintf("pvc %s: bound PV %s is reachable only from %s%s", pc.key, pc.pv.Name, describeAffinity(pc.pv), where)
				})}
			}
			continue
		}
		switch {
		case pc.promised && pc.selectedNode != node.Name:
			return verdict{unresolvable: r.reason(i, reasonPromised, node, func(string) string {
				if pc.selectedNode == "" {
					return fmt.Sprintf("pvc %s is already being provisioned for another node", pc.key)
				}
				return fmt.Sprintf("pvc %s is already being provisioned for node %s", pc.key, pc.selectedNode)
			})}
		case pc.promised:
			// provisioned here, never matched to a static PV
		case pc.selectorErr != nil:
			return verdict{unresolvable: r.reason(i, reasonSelector, node, func(string) string {
				return fmt.Sprintf("pvc %s: selector: %v", pc.key, pc.selectorErr)
			})}
		default:
			if match := matchStatic(pc, node, probe, excluded); match != nil {
				excluded = append(excluded, match.PV.Name)
				continue
			}
		}
		if pc.class.Provisioner == noProvisioner || pc.class.Provisioner == "" {
			return verdict{unresolvable: r.reason(i, reasonNoStaticPV, node, func(where string) string {
				return fmt.Sprintf("pvc %s: no available PV of class %s with at least %s can be used here%s",
					pc.key, pc.class.Name, pc.request.String(), where)
			})}
		}
		if !topology.MatchesTerms(pc.class.AllowedTopologies, node.Labels) {
			return verdict{unresolvable: r.reason(i, reasonAllowedTopologies, node, func(where string) string {
				return fmt.Sprintf("pvc %s: class %s allows %s%s", pc.key, pc.class.Name, describeAllowed(pc.class), where)
			})}
		}
		if pc.class.Provisioner != r.driver {
			continue
		}
		if !pc.source.reachable(probe) {
			return verdict{unresolvable: r.reason(i, reasonSource, node, func(where string) string {
				return pc.source.problem + where
			})}
		}
		needs = addNeed(needs, pc, node)
	}
	if len(needs) == 0 {
		return verdict{}
	}
	return verdict{short: r.checkCapacity(needs, node)}
}

// sourceCheck is where a restore's snapshot or a clone's source can be
// read, resolved once per request. problem, when reachable says no, is
// the reason (without where the node is).
type sourceCheck struct {
	everywhere bool
	segments   []topology.Segment                  // a snapshot's accessible topology
	affinity   *nodeaffinity.LazyErrorNodeSelector // a clone source's PV affinity
	problem    string
}

func (s sourceCheck) reachable(probe *corev1.Node) bool {
	switch {
	case s.everywhere:
		return true
	case s.segments != nil:
		return topology.ReachableFrom(probe.Labels, s.segments)
	case s.affinity != nil:
		return reaches(s.affinity, probe)
	}
	return false
}

// resolveSource: a restore fits only where its snapshot can be read, a
// clone only where its source volume is reachable. What is not known yet
// (no content, no topology recorded) does not restrict.
func resolveSource(state State, pc *podClaim) sourceCheck {
	everywhere := sourceCheck{everywhere: true}
	source, ok := claimsource.Of(pc.claim)
	if !ok {
		return everywhere
	}
	name := source.Namespace + "/" + source.Name
	switch {
	case source.IsSnapshot():
		if !state.SnapshotsServed() {
			return everywhere // no snapshot API seen: where snapshots live is unknown
		}
		snap, ok := state.Snapshot(source.Namespace, source.Name)
		if !ok {
			return sourceCheck{problem: fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which does not exist", pc.key, name)}
		}
		if snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil {
			return sourceCheck{problem: fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which is not bound to a content yet", pc.key, name)}
		}
		content, ok := state.Content(*snap.Status.BoundVolumeSnapshotContentName)
		if !ok || content.Annotations[topology.AnnAccessibleTopology] == "" {
			return everywhere
		}
		segments, err := topology.DecodeSegments(content.Annotations[topology.AnnAccessibleTopology])
		if err != nil || len(segments) == 0 {
			return everywhere
		}
		return sourceCheck{segments: segments, problem: fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which can be restored only at %s",
			pc.key, name, describeSegments(segments))}
	case source.IsClaim():
		sourceClaim, ok := state.Claim(source.Namespace, source.Name)
		if !ok || sourceClaim.Spec.VolumeName == "" {
			return sourceCheck{problem: fmt.Sprintf("pvc %s clones pvc %s, which does not exist or is not bound", pc.key, name)}
		}
		pv, ok := state.Volume(sourceClaim.Spec.VolumeName)
		if !ok || compileAffinity(pv) == nil {
			return everywhere
		}
		return sourceCheck{affinity: compileAffinity(pv), problem: fmt.Sprintf("pvc %s clones pvc %s, whose volume is reachable only from %s",
			pc.key, name, describeAffinity(pv))}
	}
	return everywhere
}

// poolNeed sums what a pod asks of one pool. A node reaches one pool of
// each scope (its own, its zone's), so the scope names the pool.
type poolNeed struct {
	class  string
	scope  topology.Scope
	bytes  int64
	claims []string
}

// addNeed adds the claim's request to the need of its scope's pool.
func addNeed(needs []poolNeed, pc *podClaim, node *corev1.Node) []poolNeed {
	scope, err := topology.ParseScope(pc.class.Parameters["scope"])
	if err != nil {
		return needs
	}
	i := 0
	for i < len(needs) && needs[i].scope != scope {
		i++
	}
	if i == len(needs) {
		needs = append(needs, poolNeed{class: pc.class.Name, scope: scope})
	}
	needs[i].bytes += pc.request.Value()
	needs[i].claims = append(needs[i].claims, pc.key)
	return needs
}

// poolName names a node's pool of a scope for people.
func poolName(scope topology.Scope, node *corev1.Node) string {
	if scope == topology.ScopeZone {
		return "zone pool of " + topology.LocationFromLabels(node.Name, node.Labels).Zone
	}
	return "node pool of " + node.Name
}

// checkCapacity compares each pool's summed need with its published free
// capacity less what pending claims were already promised: on this node for
// its node pool, on any node of its zone for the zone pool. Unknown capacity
// never rejects.
func (r *filterRun) checkCapacity(needs []poolNeed, node *corev1.Node) string {
	sort.Slice(needs, func(i, j int) bool { return needs[i].scope < needs[j].scope })
	for _, need := range needs {
		free, ok := r.state.FreeCapacity(need.class, node)
		if !ok {
			continue
		}
		reserved := r.reserved(node, need.scope)
		if need.bytes > free-reserved {
			return fmt.Sprintf("%s: %s needs %s in the %s, which has %s free with %s promised to pending claims",
				strings.Join(need.claims, ", "), pluralClaims(len(need.claims)), quantity(need.bytes), poolName(need.scope, node),
				quantity(free), quantity(reserved))
		}
	}
	return ""
}

// reserved is what pending claims of the scope were promised from the pool
// node reaches: its own for node scope; for zone scope, the zone's, summed
// over the zone's nodes once per request.
func (r *filterRun) reserved(node *corev1.Node, scope topology.Scope) int64 {
	if scope != topology.ScopeZone {
		return reservedOn(r.state, r.driver, r.own, node.Name, scope)
	}
	zone := topology.LocationFromLabels(node.Name, node.Labels).Zone
	if zone == "" {
		return reservedOn(r.state, r.driver, r.own, node.Name, scope)
	}
	if total, ok := r.zoneReserved[zone]; ok {
		return total
	}
	var total int64
	for _, name := range r.state.NodesInZone(zone) {
		total += reservedOn(r.state, r.driver, r.own, name, scope)
	}
	if r.zoneReserved == nil {
		r.zoneReserved = map[string]int64{}
	}
	r.zoneReserved[zone] = total
	return total
}

func pluralClaims(n int) string {
	if n == 1 {
		return "the claim"
	}
	return fmt.Sprintf("together the %d claims", n)
}

func quantity(bytes int64) string { return resource.NewQuantity(bytes, resource.BinarySI).String() }

// ownClaims are the pod's own claims, as "namespace/name": promised to a
// node by an earlier attempt, they must not count against it twice.
func ownClaims(pod *corev1.Pod) map[string]bool {
	own := map[string]bool{}
	if pod == nil {
		return own
	}
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.PersistentVolumeClaim != nil:
			own[pod.Namespace+"/"+v.PersistentVolumeClaim.ClaimName] = true
		case v.Ephemeral != nil:
			own[pod.Namespace+"/"+pod.Name+"-"+v.Name] = true
		}
	}
	return own
}

// reservedOn sums the requests of claims of the driver promised to node but
// not bound yet, other than the pod's own, of the given scope.
func reservedOn(state State, driver string, own map[string]bool, node string, scope topology.Scope) int64 {
	var total int64
	for _, claim := range state.PendingOnNode(node) {
		if own[claim.Namespace+"/"+claim.Name] {
			continue
		}
		class, ok := state.Class(volumehelpers.GetPersistentVolumeClaimClass(claim))
		if !ok || class.Provisioner != driver {
			continue
		}
		if claimScope, err := topology.ParseScope(class.Parameters["scope"]); err != nil || claimScope != scope {
			continue
		}
		request := claim.Spec.Resources.Requests[corev1.ResourceStorage]
		total += request.Value()
	}
	return total
}
