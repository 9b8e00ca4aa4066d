package extender

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/toposnap/toposnap/internal/claimsource"
	"github.com/toposnap/toposnap/internal/topology"
)

const (
	annSelectedNode = "volume.kubernetes.io/selected-node"
	noProvisioner   = "kubernetes.io/no-provisioner"
)

// podClaim is one of a pod's claims, resolved once per request.
type podClaim struct {
	claim *corev1.PersistentVolumeClaim
	class *storagev1.StorageClass // nil for claims bound without a class
	pv    *corev1.PersistentVolume
	key   string // "namespace/name", for messages
}

// Filter decides, for each candidate node, whether the pod's volumes can be
// there. It never errors: "no node fits" is a normal answer; nodes whose
// topology cannot change go to FailedAndUnresolvableNodes, nodes short of
// capacity (which can change) to FailedNodes. NodeNames is never nil.
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
	own := ownClaims(pod)
	for _, name := range nodeNames {
		if problem != "" {
			result.FailedAndUnresolvableNodes[name] = problem
			continue
		}
		node, ok := state.Node(name)
		if !ok {
			result.FailedAndUnresolvableNodes[name] = fmt.Sprintf("node %s is not known to the extender yet", name)
			continue
		}
		verdict := checkNode(state, driver, own, claims, node)
		switch {
		case verdict.unresolvable != "":
			result.FailedAndUnresolvableNodes[name] = verdict.unresolvable
		case verdict.short != "":
			result.FailedNodes[name] = verdict.short
		default:
			*result.NodeNames = append(*result.NodeNames, name)
		}
	}
	return result
}

// resolveClaims finds the pod's claims, their classes and bound PVs. A
// problem that no node can fix is returned as a message for every node.
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
		pc := podClaim{claim: claim, key: key}
		if className := volumehelpers.GetPersistentVolumeClaimClass(claim); className != "" {
			pc.class, _ = state.Class(className)
		}
		if claim.Spec.VolumeName != "" {
			pv, ok := state.Volume(claim.Spec.VolumeName)
			if !ok {
				return nil, fmt.Sprintf("pvc %s is bound to PV %s, which does not exist", key, claim.Spec.VolumeName)
			}
			pc.pv = pv
		} else {
			switch {
			case pc.class == nil:
				return nil, fmt.Sprintf("pvc %s: StorageClass %q not found", key, volumehelpers.GetPersistentVolumeClaimClass(claim))
			case pc.class.VolumeBindingMode == nil || *pc.class.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer:
				return nil, fmt.Sprintf("pvc %s is unbound and its class %s binds Immediately; wait for it to bind", key, pc.class.Name)
			}
		}
		claims = append(claims, pc)
	}
	return claims, ""
}

type verdict struct {
	unresolvable string // topology: no scheduling change fixes it
	short        string // capacity: may change
}

// checkNode applies, in order, the in-tree VolumeBinding rules and then
// toposnap's extras to one node.
func checkNode(state State, driver string, own map[string]bool, claims []podClaim, node *corev1.Node) verdict {
	excluded := map[string]*corev1.PersistentVolume{}
	needs := map[string]*poolNeed{}
	for _, pc := range claims {
		if pc.pv != nil {
			if err := volumehelpers.CheckNodeAffinity(pc.pv, node.Labels); err != nil {
				return verdict{unresolvable: fmt.Sprintf("pvc %s: bound PV %s is reachable only from %s; node %s is at %s",
					pc.key, pc.pv.Name, describeAffinity(pc.pv), node.Name, describeNode(node))}
			}
			continue
		}
		match, err := volumehelpers.FindMatchingVolume(pc.claim, state.StaticCandidates(pc.class.Name, node), node, excluded, true, true)
		if err != nil {
			return verdict{unresolvable: fmt.Sprintf("pvc %s: %v", pc.key, err)}
		}
		if match != nil {
			excluded[match.Name] = match
			continue
		}
		if pc.class.Provisioner == noProvisioner {
			request := pc.claim.Spec.Resources.Requests[corev1.ResourceStorage]
			return verdict{unresolvable: fmt.Sprintf("pvc %s: no available PV of class %s with at least %s fits node %s",
				pc.key, pc.class.Name, request.String(), node.Name)}
		}
		if !topology.MatchesTerms(pc.class.AllowedTopologies, node.Labels) {
			return verdict{unresolvable: fmt.Sprintf("pvc %s: class %s allows %s; node %s is at %s",
				pc.key, pc.class.Name, describeAllowed(pc.class), node.Name, describeNode(node))}
		}
		if pc.class.Provisioner != driver {
			continue
		}
		if reason := checkSource(state, pc, node); reason != "" {
			return verdict{unresolvable: reason}
		}
		addNeed(needs, pc, node)
	}
	return verdict{short: checkCapacity(state, driver, own, needs, node)}
}

// checkSource: a restore fits only where its snapshot can be read, a clone
// only where its source volume is reachable.
func checkSource(state State, pc podClaim, node *corev1.Node) string {
	source, ok := claimsource.Of(pc.claim)
	if !ok {
		return ""
	}
	name := source.Name
	switch {
	case source.IsSnapshot():
		snap, ok := state.Snapshot(pc.claim.Namespace, name)
		if !ok {
			return fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which does not exist", pc.key, name)
		}
		if snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil {
			return fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which is not bound to a content yet", pc.key, name)
		}
		content, ok := state.Content(*snap.Status.BoundVolumeSnapshotContentName)
		if !ok {
			return ""
		}
		annotation := content.Annotations[topology.AnnAccessibleTopology]
		if annotation == "" {
			return ""
		}
		segments, err := topology.DecodeSegments(annotation)
		if err != nil || len(segments) == 0 || topology.ReachableFrom(node.Labels, segments) {
			return ""
		}
		return fmt.Sprintf("pvc %s restores VolumeSnapshot %s, which can be restored only at %s; node %s is at %s",
			pc.key, name, describeSegments(segments), node.Name, describeNode(node))
	case source.IsClaim():
		sourceClaim, ok := state.Claim(pc.claim.Namespace, name)
		if !ok || sourceClaim.Spec.VolumeName == "" {
			return fmt.Sprintf("pvc %s clones pvc %s, which does not exist or is not bound", pc.key, name)
		}
		pv, ok := state.Volume(sourceClaim.Spec.VolumeName)
		if !ok {
			return ""
		}
		if err := volumehelpers.CheckNodeAffinity(pv, node.Labels); err != nil {
			return fmt.Sprintf("pvc %s clones pvc %s, whose volume is reachable only from %s; node %s is at %s",
				pc.key, name, describeAffinity(pv), node.Name, describeNode(node))
		}
	}
	return ""
}

// poolNeed sums what a pod asks of one pool (a node's, or a zone's).
type poolNeed struct {
	class  string
	pool   string // for messages: "node pool of node1", "zone pool of cn-hangzhou-b"
	scope  topology.Scope
	bytes  int64
	claims []string
}

func addNeed(needs map[string]*poolNeed, pc podClaim, node *corev1.Node) {
	scope, err := topology.ParseScope(pc.class.Parameters["scope"])
	if err != nil {
		return
	}
	pool := "node pool of " + node.Name
	if scope == topology.ScopeZone {
		pool = "zone pool of " + topology.LocationFromLabels(node.Name, node.Labels).Zone
	}
	need, ok := needs[pool]
	if !ok {
		need = &poolNeed{class: pc.class.Name, pool: pool, scope: scope}
		needs[pool] = need
	}
	request := pc.claim.Spec.Resources.Requests[corev1.ResourceStorage]
	need.bytes += request.Value()
	need.claims = append(need.claims, pc.key)
}

// checkCapacity compares each pool's summed need with its published free
// capacity less what pending claims were already promised on this node.
// Unknown capacity never rejects.
func checkCapacity(state State, driver string, own map[string]bool, needs map[string]*poolNeed, node *corev1.Node) string {
	pools := make([]string, 0, len(needs))
	for pool := range needs {
		pools = append(pools, pool)
	}
	sort.Strings(pools)
	for _, pool := range pools {
		need := needs[pool]
		free, ok := state.FreeCapacity(need.class, node)
		if !ok {
			continue
		}
		reserved := reservedOn(state, driver, own, node.Name, need.scope)
		if need.bytes > free-reserved {
			return fmt.Sprintf("%s: %s needs %s in the %s, which has %s free with %s promised to pending claims",
				strings.Join(need.claims, ", "), pluralClaims(len(need.claims)), quantity(need.bytes), pool,
				quantity(free), quantity(reserved))
		}
	}
	return ""
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
		if v.PersistentVolumeClaim != nil {
			own[pod.Namespace+"/"+v.PersistentVolumeClaim.ClaimName] = true
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
