package extender

import (
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// describeWhere ends a reason with where the node is, in the terms people
// use ("; node is in zone b (region r)"), or with nothing when the node has
// no zone label: the answer is keyed by node name already.
func describeWhere(location topology.Location) string {
	switch {
	case location.Zone != "" && location.Region != "":
		return "; node is in zone " + location.Zone + " (region " + location.Region + ")"
	case location.Zone != "":
		return "; node is in zone " + location.Zone
	}
	return ""
}

// describeAffinity renders a PV's required node affinity.
func describeAffinity(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return "anywhere"
	}
	terms := make([]string, 0, len(pv.Spec.NodeAffinity.Required.NodeSelectorTerms))
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		exprs := make([]string, 0, len(term.MatchExpressions))
		for _, e := range term.MatchExpressions {
			key := topology.ShortKey(e.Key)
			switch {
			case e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1:
				exprs = append(exprs, key+" "+e.Values[0])
			case len(e.Values) > 0:
				exprs = append(exprs, key+" "+strings.ToLower(string(e.Operator))+" ("+strings.Join(e.Values, ", ")+")")
			default:
				exprs = append(exprs, key+" "+strings.ToLower(string(e.Operator)))
			}
		}
		terms = append(terms, strings.Join(exprs, " and "))
	}
	return strings.Join(terms, " or ")
}

func describeAllowed(class *storagev1.StorageClass) string {
	return topology.DescribeTerms(class.AllowedTopologies)
}

func describeSegments(segments []topology.Segment) string {
	parts := make([]string, 0, len(segments))
	for _, seg := range segments {
		keys := make([]string, 0, len(seg))
		for k := range seg {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		pairs := make([]string, 0, len(keys))
		for _, k := range keys {
			pairs = append(pairs, topology.ShortKey(k)+" "+seg[k])
		}
		parts = append(parts, strings.Join(pairs, " and "))
	}
	return strings.Join(parts, " or ")
}
