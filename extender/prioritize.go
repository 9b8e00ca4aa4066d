package extender

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// MaxScore is the top of the extender score range kube-scheduler accepts.
const MaxScore = 10

// Placement policies, from the class parameter toposnap.io/placement.
const (
	placementParameter = "toposnap.io/placement"
	placementSpread    = "spread"
	placementBinpack   = "binpack"
)

// Prioritize scores nodes 0..10 for the pod's volumes: static PVs that fit
// with the least waste score highest; for claims to provision, the pool's
// free space counts up (spread, the default) or down (binpack). A pod with
// no claims scores 0 everywhere, leaving the choice to other scorers.
func Prioritize(state State, driver string, pod *corev1.Pod, nodeNames []string) extenderv1.HostPriorityList {
	scores := make(extenderv1.HostPriorityList, len(nodeNames))
	for i, name := range nodeNames {
		scores[i].Host = name
	}
	if pod == nil {
		return scores
	}
	claims, problem := resolveClaims(state, pod)
	if problem != "" || len(claims) == 0 {
		return scores
	}
	nodes := make([]*corev1.Node, len(nodeNames))
	free := make([]int64, len(nodeNames))
	var maxFree int64
	for i, name := range nodeNames {
		node, ok := state.Node(name)
		if !ok {
			continue
		}
		nodes[i] = node
		for _, pc := range claims {
			if pc.pv == nil && pc.class != nil && pc.class.Provisioner == driver {
				if f, ok := state.FreeCapacity(pc.class.Name, node); ok {
					free[i] = f
					maxFree = max(maxFree, f)
					break
				}
			}
		}
	}
	probe := &corev1.Node{} // reused: the node under scoring, labels only
	for i, node := range nodes {
		if node != nil {
			probe.Labels = node.Labels
			scores[i].Score = scoreNode(driver, claims, node, probe, free[i], maxFree)
		}
	}
	return scores
}

// scoreNode averages per-claim scores on one node.
func scoreNode(driver string, claims []podClaim, node, probe *corev1.Node, free, maxFree int64) int64 {
	var total, counted int64
	var excludedBuf [4]string
	excluded := excludedBuf[:0]
	for i := range claims {
		pc := &claims[i]
		if pc.pv != nil || pc.class == nil {
			continue
		}
		counted++
		// A claim being provisioned, or never matchable, has no static PV to score.
		if !pc.promised && pc.selectorErr == nil {
			if match := matchStatic(pc, node, probe, excluded); match != nil {
				excluded = append(excluded, match.PV.Name)
				total += fitScore(pc.request, match.size)
				continue
			}
		}
		if pc.class.Provisioner != driver || maxFree == 0 {
			continue
		}
		share := free * MaxScore / maxFree
		if pc.class.Parameters[placementParameter] == placementBinpack {
			share = MaxScore - share
		}
		total += share
	}
	if counted == 0 {
		return 0
	}
	return min(max(total/counted, 0), MaxScore)
}

// fitScore is 10 for a PV exactly the claim's size, less the more it wastes.
func fitScore(request, size resource.Quantity) int64 {
	if size.Value() <= 0 {
		return 0
	}
	waste := size.Value() - request.Value()
	return MaxScore - waste*MaxScore/size.Value()
}
