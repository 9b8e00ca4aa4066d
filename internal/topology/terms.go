package topology

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// MatchesTerms applies a StorageClass's allowedTopologies to a node's
// labels: no terms match every node; terms are ORed, the expressions of a
// term ANDed, as the API defines.
func MatchesTerms(terms []corev1.TopologySelectorTerm, labels map[string]string) bool {
	if len(terms) == 0 {
		return true
	}
	for _, term := range terms {
		if termMatches(term, labels) {
			return true
		}
	}
	return false
}

func termMatches(term corev1.TopologySelectorTerm, labels map[string]string) bool {
	if len(term.MatchLabelExpressions) == 0 {
		return false // an empty term selects nothing, as the API defines
	}
	for _, expr := range term.MatchLabelExpressions {
		value, ok := labels[expr.Key]
		if !ok || !containsString(expr.Values, value) {
			return false
		}
	}
	return true
}

func containsString(values []string, value string) bool {
	for _, v := range values {
		if v == value {
			return true
		}
	}
	return false
}

// DescribeTerms renders allowedTopologies for people, e.g.
// "zone cn-hangzhou-d" or "zone in (a, b) and region r; node n1".
func DescribeTerms(terms []corev1.TopologySelectorTerm) string {
	parts := make([]string, 0, len(terms))
	for _, term := range terms {
		exprs := make([]string, 0, len(term.MatchLabelExpressions))
		for _, e := range term.MatchLabelExpressions {
			key := ShortKey(e.Key)
			if len(e.Values) == 1 {
				exprs = append(exprs, key+" "+e.Values[0])
			} else {
				exprs = append(exprs, key+" in ("+strings.Join(e.Values, ", ")+")")
			}
		}
		parts = append(parts, strings.Join(exprs, " and "))
	}
	return strings.Join(parts, "; ")
}

// ShortKey names a well-known topology key the way people say it.
func ShortKey(key string) string {
	switch key {
	case ZoneKey, LegacyZoneKey:
		return "zone"
	case RegionKey, LegacyRegionKey:
		return "region"
	case NodeKey, HostnameKey:
		return "node"
	}
	return key
}
