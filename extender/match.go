package extender

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	volumehelpers "k8s.io/component-helpers/storage/volume"
)

// matchStatic answers, for one node, what the scheduler's
// volumehelpers.FindMatchingVolume(claim, pvs of the class, node, excluded,
// delayBinding=true, vacEnabled=true) answers, rule for rule and with the
// same component-helpers predicates, but over indexed candidates whose node
// affinity was compiled once instead of once per PV per node (the cost that
// dominated a 5,000-node request). The differential test in test/intree
// holds the two to the same answers.
//
// A PV pre-bound to the claim decides alone: FindMatchingVolume returns at
// the first one that passes its early checks, with that PV if it reaches
// the node and with nothing otherwise. Else the smallest available PV that
// fits wins; ties go to the lower name so answers do not depend on order.
//
// lists are the class's static PVs that may suit the node (classNodes).
func matchStatic(pc *podClaim, lists []CandidateList, probe *corev1.Node, excluded []string) *Candidate {
	for i := range pc.prebound {
		candidate := &pc.prebound[i]
		if passesEarlyChecks(pc, candidate, excluded) && volumehelpers.IsVolumeBoundToClaim(candidate.PV, pc.claim) {
			if candidate.Reaches(probe) {
				return candidate
			}
			return nil
		}
	}
	var best *Candidate
	for _, group := range lists {
		for i := range group.list {
			candidate := &group.list[i]
			// Lists hold the claim's class only: the index is by class.
			if candidate.claimed || !passesEarlyChecks(pc, candidate, excluded) || !candidate.available ||
				(pc.selector != nil && !pc.selector.Matches(labels.Set(candidate.PV.Labels))) ||
				!reachable(group, candidate, probe) ||
				!candidate.modes.offers(pc.modes, pc.claim, candidate.PV) {
				continue
			}
			if best == nil || best.size.Cmp(candidate.size) > 0 ||
				(best.size.Cmp(candidate.size) == 0 && candidate.name < best.name) {
				best = candidate
			}
		}
	}
	return best
}

// passesEarlyChecks are FindMatchingVolume's checks before node affinity:
// not taken by another of the pod's claims, not bound to another claim,
// large enough, same volume mode and attributes class, not being deleted.
func passesEarlyChecks(pc *podClaim, candidate *Candidate, excluded []string) bool {
	if candidate.size.Cmp(pc.request) < 0 || candidate.mode != pc.mode || candidate.attributes != pc.attributes ||
		candidate.deleting || slices.Contains(excluded, candidate.name) {
		return false
	}
	return !candidate.claimed || volumehelpers.IsVolumeBoundToClaim(candidate.PV, pc.claim)
}

// reachable: a candidate found through a node label it is exactly filed
// under matches that node without evaluating its selector.
func reachable(group CandidateList, candidate *Candidate, probe *corev1.Node) bool {
	return group.byLabel && candidate.indexExact || candidate.Reaches(probe)
}
