package extender

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

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
	claim      *corev1.PersistentVolumeClaim
	class      *storagev1.StorageClass // nil for claims bound without a class
	pv         *corev1.PersistentVolume
	affinity   *nodeaffinity.LazyErrorNodeSelector // the bound PV's
	key        string                              // "namespace/name", for messages
	request    resource.Quantity
	mode       corev1.PersistentVolumeMode // requested, Filesystem by default
	attributes string                      // requested volumeAttributesClassName
	prebound   []Candidate                 // PVs of the class whose claimRef names this claim
	joined     *classNodes                 // the class's static PVs and capacities by node
	// Checks made once per place where they read only place labels.
	boundReach, allowed placeMemo
	modes               accessModes     // requested access modes
	selector            labels.Selector // the claim's selector for static PVs
	selectorErr         error
	source              sourceCheck
	binpack             bool // the class's placement policy is binpack
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
	return decide(state, driver, pod, nodeNames).result()
}

// outcome is what Filter says of one node.
type outcome uint8

const (
	fits outcome = iota
	unresolvable
	short
)

// nodeVerdict is one node's outcome and, when it does not fit, what the
// reason is about and the index of its words in filterAnswer.texts.
type nodeVerdict struct {
	outcome outcome
	kind    reasonKind
	text    int32
}

// filterAnswer is Filter's answer in compact form: a verdict per node
// name, in the request's order, and each distinct reason once. The server
// writes it to the wire as it is (wire.go); building the answer's maps
// and sorting their keys cost more than the decision itself.
type filterAnswer struct {
	names    []string
	verdicts []nodeVerdict
	texts    []string
	err      string
}

// result is the answer as the extender API's type.
func (a *filterAnswer) result() extenderv1.ExtenderFilterResult {
	result := extenderv1.ExtenderFilterResult{
		NodeNames:                  &[]string{},
		FailedNodes:                extenderv1.FailedNodesMap{},
		FailedAndUnresolvableNodes: extenderv1.FailedNodesMap{},
		Error:                      a.err,
	}
	for i, v := range a.verdicts {
		switch v.outcome {
		case fits:
			*result.NodeNames = append(*result.NodeNames, a.names[i])
		case unresolvable:
			result.FailedAndUnresolvableNodes[a.names[i]] = a.texts[v.text]
		case short:
			result.FailedNodes[a.names[i]] = a.texts[v.text]
		}
	}
	return result
}

// decide is Filter's decision in compact form.
func decide(state State, driver string, pod *corev1.Pod, nodeNames []string) *filterAnswer {
	index := state.snapshot()
	return decideAt(state, index, driver, pod, index.nodes.resolve(nodeNames), nil)
}

// decideAt decides over index for nodes already looked up in its table;
// verdicts is reused when it has room.
func decideAt(state State, index *indexSnapshot, driver string, pod *corev1.Pod, nodes nodeRefs, verdicts []nodeVerdict) *filterAnswer {
	answer := &filterAnswer{names: nodes.names}
	if pod == nil {
		answer.err = "request has no pod"
		return answer
	}
	if loading, _ := state.readiness(); loading != "" {
		// An error, not a node verdict: the scheduler tries the pod again
		// soon, rather than marking it unschedulable for what the extender
		// does not know yet.
		answer.err, answer.verdicts = "toposnap extender is starting: "+loading, verdicts[:0]
		return answer
	}
	answer.verdicts = slices.Grow(verdicts[:0], len(nodes.names))[:len(nodes.names)]
	claims, problem := resolveClaims(state, index, pod)
	for i := range claims {
		if waiting := claims[i].source.waiting; waiting != "" {
			answer.err, answer.verdicts = waiting, answer.verdicts[:0]
			return answer
		}
	}
	if problem != "" {
		answer.texts = []string{problem}
		for i := range answer.verdicts {
			answer.verdicts[i] = nodeVerdict{outcome: unresolvable, kind: reasonClaim}
		}
		return answer
	}
	run := &filterRun{state: state, index: index, driver: driver, own: ownClaims(pod), claims: claims, answer: answer, now: time.Now()}
	for i, at := range nodes.nodes {
		if at.node == nil {
			answer.verdicts[i] = nodeVerdict{short, reasonUnknownNode, answer.text(fmt.Sprintf("node %s is not known to the extender yet", nodes.names[i]))}
			continue
		}
		answer.verdicts[i] = run.checkNode(at)
	}
	return answer
}

// text adds a reason and returns its index.
func (a *filterAnswer) text(reason string) int32 {
	a.texts = append(a.texts, reason)
	return int32(len(a.texts) - 1)
}

// resolveClaims finds the pod's claims, their classes, bound PVs and
// sources. A problem that no node can fix is returned as a message for
// every node.
func resolveClaims(state State, index *indexSnapshot, pod *corev1.Pod) ([]podClaim, string) {
	places := 0
	if index.nodes != nil {
		places = len(index.nodes.places)
	}
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
			pc.boundReach = affinityMemo(pv, pc.affinity, places)
		} else {
			switch {
			case pc.class == nil:
				return nil, fmt.Sprintf("pvc %s: StorageClass %q not found", key, volumehelpers.GetPersistentVolumeClaimClass(claim))
			case pc.class.VolumeBindingMode == nil || *pc.class.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer:
				return nil, fmt.Sprintf("pvc %s is unbound and its class %s binds Immediately; wait for it to bind", key, pc.class.Name)
			}
			pc.mode, pc.attributes = volumeMode(claim.Spec.VolumeMode), ptr.Deref(claim.Spec.VolumeAttributesClassName, "")
			pc.prebound = index.preBoundTo(pc.class.Name, claim.Namespace, claim.Name)
			pc.modes, pc.binpack = modesOf(claim.Spec.AccessModes), pc.class.Parameters[placementParameter] == placementBinpack
			pc.joined = index.joined[pc.class.Name]
			pc.allowed = newPlaceMemo(termsPlaceOnly(pc.class.AllowedTopologies), places)
			if claim.Spec.Selector != nil {
				pc.selector, pc.selectorErr = metav1.LabelSelectorAsSelector(claim.Spec.Selector)
			}
			pc.source = resolveSource(state, &pc, places)
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

// filterRun is one filter request: the pod's resolved claims and the
// reasons already worded, shared by nodes in the same place.
type filterRun struct {
	state   State
	index   *indexSnapshot
	driver  string
	own     map[string]bool
	claims  []podClaim
	answer  *filterAnswer
	reasons []int32     // by claim, kind and place: 1 + index in answer.texts, 0 before worded
	probe   corev1.Node // reused: the node under check, labels only
	needs   [2]poolNeed // reused: what the pod asks of a node's pools
	// zoneReserved memoizes reserved for zone pools, by zone.
	zoneReserved map[string]int64
	now          time.Time // when promises are judged (promiseHolds)
}

type reasonKind uint8

// What a verdict's reason is about, for the decisions metric; the first
// six are also the topology mismatches worded once per place.
const (
	reasonBoundPV reasonKind = iota
	reasonNoStaticPV
	reasonAllowedTopologies
	reasonSource
	reasonSelector
	reasonPromised
	reasonClaim       // a problem of the pod's claims that no node fixes
	reasonCapacity    // a pool short of room
	reasonUnknownNode // a node the extender has not seen yet
	reasonNone        // the node fits
	reasonKinds       // how many kinds there are
)

// reasonNames label the decisions metric.
var reasonNames = [reasonKinds]string{"bound-pv", "no-static-pv", "allowed-topologies", "snapshot-or-clone-source",
	"selector", "being-provisioned", "claim", "capacity", "unknown-node", "none"}

// mismatch words a topology mismatch once per claim, kind and place (the
// only node-dependent part of any reason's words).
func (r *filterRun) mismatch(claim int, kind reasonKind, at tableNode, word func(where string) string) nodeVerdict {
	places := len(r.index.nodes.places)
	if r.reasons == nil {
		r.reasons = make([]int32, len(r.claims)*int(reasonKinds)*places)
	}
	slot := &r.reasons[(claim*int(reasonKinds)+int(kind))*places+int(at.place)]
	if *slot == 0 {
		*slot = r.answer.text(word(describeWhere(r.index.nodes.places[at.place].location))) + 1
	}
	return nodeVerdict{unresolvable, kind, *slot - 1}
}

// checkNode applies, in order, the in-tree VolumeBinding rules and then
// toposnap's extras to one node.
func (r *filterRun) checkNode(at tableNode) nodeVerdict {
	places := r.index.nodes.places
	r.probe.Labels = at.labels
	probe := &r.probe
	var excludedBuf [4]string
	excluded := excludedBuf[:0]
	needs := r.needs[:0]
	for i := range r.claims {
		pc := &r.claims[i]
		if pc.pv != nil {
			if !pc.boundReach.check(at.place, places, probe, pc.reaches) {
				return r.mismatch(i, reasonBoundPV, at, func(where string) string {
					return fmt.Sprintf("pvc %s: bound PV %s is reachable only from %s%s", pc.key, pc.pv.Name, describeAffinity(pc.pv), where)
				})
			}
			continue
		}
		switch {
		case pc.promised && pc.selectedNode != at.name:
			return r.mismatch(i, reasonPromised, at, func(string) string {
				if pc.selectedNode == "" {
					return fmt.Sprintf("pvc %s is already being provisioned for another node", pc.key)
				}
				return fmt.Sprintf("pvc %s is already being provisioned for node %s", pc.key, pc.selectedNode)
			})
		case pc.promised:
			// provisioned here, never matched to a static PV
		case pc.selectorErr != nil:
			return r.mismatch(i, reasonSelector, at, func(string) string {
				return fmt.Sprintf("pvc %s: selector: %v", pc.key, pc.selectorErr)
			})
		default:
			if match := matchStatic(pc, pc.joined.staticAt(at.index), probe, excluded); match != nil {
				excluded = append(excluded, match.name)
				continue
			}
		}
		if pc.class.Provisioner == noProvisioner || pc.class.Provisioner == "" {
			return r.mismatch(i, reasonNoStaticPV, at, func(where string) string {
				return fmt.Sprintf("pvc %s: no available PV of class %s with at least %s can be used here%s",
					pc.key, pc.class.Name, pc.request.String(), where)
			})
		}
		if !pc.allowed.check(at.place, places, probe, pc.allowedAt) {
			return r.mismatch(i, reasonAllowedTopologies, at, func(where string) string {
				return fmt.Sprintf("pvc %s: class %s allows %s%s", pc.key, pc.class.Name, describeAllowed(pc.class), where)
			})
		}
		if pc.class.Provisioner != r.driver {
			continue
		}
		if !pc.source.memo.check(at.place, places, probe, pc.source.reachable) {
			return r.mismatch(i, reasonSource, at, func(where string) string {
				return pc.source.problem + where
			})
		}
		needs = addNeed(needs, i, pc)
	}
	if len(needs) == 0 {
		return nodeVerdict{fits, reasonNone, 0}
	}
	if shortfall := r.checkCapacity(needs, at); shortfall != "" {
		return nodeVerdict{short, reasonCapacity, r.answer.text(shortfall)}
	}
	return nodeVerdict{fits, reasonNone, 0}
}

// reaches: the claim's bound PV can be used from the probe's labels.
func (pc *podClaim) reaches(probe *corev1.Node) bool { return reaches(pc.affinity, probe) }

// allowedAt: the claim's class may provision at the probe's labels.
func (pc *podClaim) allowedAt(probe *corev1.Node) bool {
	return topology.MatchesTerms(pc.class.AllowedTopologies, probe.Labels)
}

// sourceCheck is where a restore's snapshot or a clone's source can be
// read, resolved once per request. problem, when reachable says no, is
// the reason (without where the node is).
type sourceCheck struct {
	memo       placeMemo // once per place, when the source is placed by place labels only
	everywhere bool
	segments   []topology.Segment                  // a snapshot's accessible topology
	affinity   *nodeaffinity.LazyErrorNodeSelector // a clone source's PV affinity
	problem    string
	// waiting, when set, is why the source cannot be placed yet: the
	// request is answered with it as an error, to be tried again.
	waiting string
}

func (s *sourceCheck) reachable(probe *corev1.Node) bool {
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
func resolveSource(state State, pc *podClaim, places int) sourceCheck {
	everywhere := sourceCheck{everywhere: true}
	source, ok := claimsource.Of(pc.claim)
	if !ok {
		return everywhere
	}
	name := source.Namespace + "/" + source.Name
	switch {
	case source.IsSnapshot():
		if !state.SnapshotsServed() {
			if _, unknown := state.readiness(); unknown != "" {
				return sourceCheck{waiting: fmt.Sprintf("pvc %s restores VolumeSnapshot %s and the toposnap extender does not know yet where snapshots live (%s); try again", pc.key, name, unknown)}
			}
			return everywhere // the API server serves no snapshot API: where snapshots live is unknown
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
		return sourceCheck{segments: segments, memo: newPlaceMemo(segmentsPlaceOnly(segments), places),
			problem: fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which can be restored only at %s", pc.key, name, describeSegments(segments))}
	case source.IsClaim():
		sourceClaim, ok := state.Claim(source.Namespace, source.Name)
		if !ok || sourceClaim.Spec.VolumeName == "" {
			return sourceCheck{problem: fmt.Sprintf("pvc %s clones pvc %s, which does not exist or is not bound", pc.key, name)}
		}
		pv, ok := state.Volume(sourceClaim.Spec.VolumeName)
		if !ok || compileAffinity(pv) == nil {
			return everywhere
		}
		affinity := compileAffinity(pv)
		return sourceCheck{affinity: affinity, memo: affinityMemo(pv, affinity, places),
			problem: fmt.Sprintf("pvc %s clones pvc %s, whose volume is reachable only from %s", pc.key, name, describeAffinity(pv))}
	}
	return everywhere
}

// poolNeed sums what a pod asks of one pool. A node reaches one pool of
// each scope (its own, its zone's), so the scope names the pool.
type poolNeed struct {
	capacity *classNodes // of the first claim's class
	scope    topology.Scope
	bytes    int64
	claims   uint64 // bit i: the pod's claim i, for the first 64 claims
	count    int
}

// addNeed adds claim i's request to the need of its scope's pool.
func addNeed(needs []poolNeed, i int, pc *podClaim) []poolNeed {
	scope, err := topology.ParseScope(pc.class.Parameters["scope"])
	if err != nil {
		return needs
	}
	n := 0
	for n < len(needs) && needs[n].scope != scope {
		n++
	}
	if n == len(needs) {
		needs = append(needs, poolNeed{capacity: pc.joined, scope: scope})
	}
	needs[n].bytes += pc.request.Value()
	needs[n].count++
	if i < 64 {
		needs[n].claims |= 1 << i
	}
	return needs
}

// claimKeys names the claims of a need, for a reason.
func (r *filterRun) claimKeys(need poolNeed) string {
	var keys []string
	for i := range min(len(r.claims), 64) {
		if need.claims&(1<<i) != 0 {
			keys = append(keys, r.claims[i].key)
		}
	}
	if len(keys) < need.count {
		keys = append(keys, fmt.Sprintf("%d more", need.count-len(keys)))
	}
	return strings.Join(keys, ", ")
}

// poolName names a node's pool of a scope for people.
func poolName(scope topology.Scope, node *corev1.Node) string {
	if scope == topology.ScopeZone {
		return "zone pool of " + topology.LocationFromLabels(node.Name, node.Labels).Zone
	}
	return "node pool of " + node.Name
}

// checkCapacity compares each pool's summed need with its published free
// capacity less what pending claims were already promised (on this node for
// its node pool, on any node of its zone for the zone pool), and each claim
// with the largest volume the pool can make. Unknown capacity never
// rejects.
func (r *filterRun) checkCapacity(needs []poolNeed, at tableNode) string {
	node := at.node
	if len(needs) == 2 && needs[0].scope > needs[1].scope {
		needs[0], needs[1] = needs[1], needs[0]
	}
	for _, need := range needs {
		free := need.capacity.freeAt(at.index)
		if !free.known {
			continue
		}
		reserved := r.reserved(node, need.scope)
		if need.bytes > free.bytes-reserved {
			return fmt.Sprintf("%s: %s needs %s in the %s, which has %s free with %s promised to pending claims",
				r.claimKeys(need), pluralClaims(need.count), quantity(need.bytes), poolName(need.scope, node),
				quantity(free.bytes), quantity(reserved))
		}
		for i := range min(len(r.claims), 64) {
			if request := r.claims[i].request.Value(); need.claims&(1<<i) != 0 && request > free.largest {
				return fmt.Sprintf("pvc %s: needs a volume of %s; the largest the %s can make is %s",
					r.claims[i].key, quantity(request), poolName(need.scope, node), quantity(free.largest))
			}
		}
	}
	return ""
}

// reserved is what pending claims of the scope were promised from the pool
// node reaches: its own for node scope; for zone scope, the zone's, summed
// over the zone's nodes once per request.
func (r *filterRun) reserved(node *corev1.Node, scope topology.Scope) int64 {
	if scope != topology.ScopeZone {
		return reservedOn(r.state, r.driver, r.own, node.Name, scope, r.now)
	}
	zone := topology.LocationFromLabels(node.Name, node.Labels).Zone
	if zone == "" {
		return reservedOn(r.state, r.driver, r.own, node.Name, scope, r.now)
	}
	if total, ok := r.zoneReserved[zone]; ok {
		return total
	}
	var total int64
	for _, name := range r.index.nodes.byZone[zone] {
		total += reservedOn(r.state, r.driver, r.own, name, scope, r.now)
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
// not bound yet, other than the pod's own, of the given scope, whose
// promise still holds at now.
func reservedOn(state State, driver string, own map[string]bool, node string, scope topology.Scope, now time.Time) int64 {
	var total int64
	ttl := state.PromiseTTL()
	for _, claim := range state.PendingOnNode(node) {
		if own[claim.Namespace+"/"+claim.Name] || !promiseHolds(claim, now, ttl) {
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
