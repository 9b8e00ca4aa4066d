package extender

import (
	"fmt"
	"math/rand/v2"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

// TestMatchStaticAgreesWithFindMatchingVolume holds the indexed matcher to
// component-helpers' FindMatchingVolume over every PV of the class, for
// random PVs (affinities with every operator, pre-binding, phases, modes,
// deletion) and claims, on every node. Ties between equal sizes may pick
// different PVs, so the answers are compared by presence and size, and by
// identity for pre-bound PVs. (test/intree compares whole filters with the
// in-tree plugin; this runs in every go test.)
func TestMatchStaticAgreesWithFindMatchingVolume(t *testing.T) {
	random := rand.New(rand.NewPCG(7, 11))
	compared := map[bool]int{}
	for round := range 300 {
		nodes := make([]*corev1.Node, 4)
		for i := range nodes {
			nodes[i] = node(fmt.Sprintf("n%d", i), fmt.Sprintf("z%d", random.IntN(2)))
			nodes[i].Labels["rack"] = fmt.Sprint(random.IntN(4))
		}
		claims := make([]*corev1.PersistentVolumeClaim, 3)
		for i := range claims {
			claims[i] = claim(fmt.Sprintf("c%d", i), "local", fmt.Sprintf("%dGi", 1+random.IntN(4)))
			claims[i].UID = types.UID(fmt.Sprintf("uid-%d", i))
			if random.IntN(4) == 0 {
				claims[i].Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
			}
			if random.IntN(6) == 0 {
				claims[i].Spec.VolumeMode = ptr.To(corev1.PersistentVolumeBlock)
			}
		}
		var pvs []*corev1.PersistentVolume
		for i := range 12 {
			pvs = append(pvs, randomPV(random, fmt.Sprintf("pv%02d", i), nodes, claims)) // in name order, as the index keeps pre-bound PVs
		}
		state := &MemState{Volumes: map[string]*corev1.PersistentVolume{}}
		for _, pv := range pvs {
			state.Volumes[pv.Name] = pv
		}
		state.Index()
		for _, c := range claims {
			pc := &podClaim{claim: c, class: class("local", noProvisioner, "node"), request: c.Spec.Resources.Requests[corev1.ResourceStorage],
				mode: corev1.PersistentVolumeFilesystem, modes: modesOf(c.Spec.AccessModes)}
			if c.Spec.VolumeMode != nil {
				pc.mode = *c.Spec.VolumeMode
			}
			index := state.snapshot()
			pc.prebound = index.preBoundTo("local", c.Namespace, c.Name)
			for _, n := range nodes {
				excluded := []string{pvs[random.IntN(len(pvs))].Name}
				excludedMap := map[string]*corev1.PersistentVolume{excluded[0]: nil}
				want, err := volumehelpers.FindMatchingVolume(c, pvs, n, excludedMap, true, true)
				if err != nil {
					t.Fatal(err)
				}
				probe := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: n.Labels}}
				var got *corev1.PersistentVolume
				if match := matchStatic(pc, index.static["local"].forNode(n.Labels, nil), probe, excluded); match != nil {
					got = match.PV
				}
				compared[want != nil]++
				if !sameMatch(got, want, c) {
					t.Fatalf("round %d, claim %s on node %s (labels %v): matchStatic %s, FindMatchingVolume %s\nPVs: %s",
						round, c.Name, n.Name, n.Labels, describePV(got), describePV(want), describePVs(pvs))
				}
			}
		}
	}
	if compared[true] < 500 || compared[false] < 500 {
		t.Fatalf("too few cases of each outcome to mean anything: %v", compared)
	}
}

func sameMatch(got, want *corev1.PersistentVolume, c *corev1.PersistentVolumeClaim) bool {
	switch {
	case got == nil || want == nil:
		return got == want
	case volumehelpers.IsVolumeBoundToClaim(want, c):
		return got == want
	}
	gotSize, wantSize := got.Spec.Capacity[corev1.ResourceStorage], want.Spec.Capacity[corev1.ResourceStorage]
	return gotSize.Cmp(wantSize) == 0
}

func randomPV(random *rand.Rand, name string, nodes []*corev1.Node, claims []*corev1.PersistentVolumeClaim) *corev1.PersistentVolume {
	pv := localPV(name, "local", fmt.Sprintf("%dGi", 1+random.IntN(5)), nodes[random.IntN(len(nodes))].Name)
	terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
	pick := func(values ...string) string { return values[random.IntN(len(values))] }
	switch random.IntN(8) {
	case 0: // a second term
		terms = append(terms, corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: topology.ZoneKey, Operator: corev1.NodeSelectorOpIn, Values: []string{pick("z0", "z1")}}}})
		pv.Spec.NodeAffinity.Required.NodeSelectorTerms = terms
	case 1: // a second expression
		terms[0].MatchExpressions = append(terms[0].MatchExpressions, corev1.NodeSelectorRequirement{
			Key: "rack", Operator: corev1.NodeSelectorOperator(pick("NotIn", "Gt", "Lt")), Values: []string{fmt.Sprint(random.IntN(4))}})
	case 2: // not filed by In at all
		terms[0].MatchExpressions = []corev1.NodeSelectorRequirement{{Key: "rack", Operator: corev1.NodeSelectorOperator(pick("Exists", "DoesNotExist"))}}
	case 3:
		pv.Spec.NodeAffinity = nil
	case 4: // an expression that does not parse
		terms[0].MatchExpressions = append(terms[0].MatchExpressions, corev1.NodeSelectorRequirement{Key: "rack", Operator: "Gt", Values: []string{"x"}})
	}
	switch random.IntN(6) {
	case 0:
		c := claims[random.IntN(len(claims))]
		pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: c.Namespace, Name: c.Name}
	case 1:
		pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "default", Name: "someone-else"}
	}
	switch random.IntN(8) {
	case 0:
		pv.Status.Phase = corev1.VolumeBound
	case 1:
		pv.DeletionTimestamp = &metav1.Time{}
	case 2:
		pv.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany, corev1.ReadWriteOnce}
	case 3:
		pv.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeBlock)
	case 4:
		pv.Spec.Capacity[corev1.ResourceStorage] = resource.MustParse("2560Mi")
	}
	return pv
}

func describePV(pv *corev1.PersistentVolume) string {
	if pv == nil {
		return "none"
	}
	size := pv.Spec.Capacity[corev1.ResourceStorage]
	return pv.Name + " (" + size.String() + ")"
}

func describePVs(pvs []*corev1.PersistentVolume) string {
	out := ""
	for _, pv := range pvs {
		out += fmt.Sprintf("\n  %s claimRef=%v phase=%s modes=%v mode=%v deleting=%v affinity=%v", describePV(pv), pv.Spec.ClaimRef,
			pv.Status.Phase, pv.Spec.AccessModes, ptr.Deref(pv.Spec.VolumeMode, ""), pv.DeletionTimestamp != nil, pv.Spec.NodeAffinity)
	}
	return out
}
