package webhook

import (
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// nodeLabels are the labels a node is matched by: its own, plus the GA zone
// and region keys filled in from the legacy failure-domain ones, so that a
// segment or an allowed topology written with the GA keys matches a node
// labelled the old way.
func nodeLabels(node *corev1.Node) map[string]string {
	if node == nil {
		return nil
	}
	location := topology.LocationFromLabels(node.Name, node.Labels)
	if location.Zone == node.Labels[topology.ZoneKey] && location.Region == node.Labels[topology.RegionKey] {
		return node.Labels
	}
	labels := make(map[string]string, len(node.Labels)+2)
	for k, v := range node.Labels {
		labels[k] = v
	}
	if location.Zone != "" {
		labels[topology.ZoneKey] = location.Zone
	}
	if location.Region != "" {
		labels[topology.RegionKey] = location.Region
	}
	return labels
}

// allowedOnNode reports whether a node with these labels satisfies the
// class's allowedTopologies (no class or no terms: every node).
func allowedOnNode(class *storagev1.StorageClass, labels map[string]string) bool {
	return class == nil || topology.MatchesTerms(class.AllowedTopologies, labels)
}

// describeAllowed renders a class's allowedTopologies for a message, e.g.
// "[zone cn-hangzhou-d]".
func describeAllowed(class *storagev1.StorageClass) string {
	return "[" + topology.DescribeTerms(class.AllowedTopologies) + "]"
}

// describeSegments renders segments for a message, e.g. "[{topology.kubernetes.io/zone=b}]".
func describeSegments(segments []topology.Segment) string {
	parts := make([]string, 0, len(segments))
	for _, segment := range segments {
		parts = append(parts, segment.String())
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// allowedKeys are the label keys a class's allowedTopologies look at, sorted.
func allowedKeys(class *storagev1.StorageClass) []string {
	var keys []string
	for _, term := range class.AllowedTopologies {
		for _, expr := range term.MatchLabelExpressions {
			if !slices.Contains(keys, expr.Key) {
				keys = append(keys, expr.Key)
			}
		}
	}
	sort.Strings(keys)
	return keys
}

// labelValues are the distinct values the nodes carry for key, sorted;
// nodes without the label are left out.
func labelValues(nodes []*corev1.Node, key string) []string {
	var values []string
	for _, node := range nodes {
		if value, ok := nodeLabels(node)[key]; ok && !slices.Contains(values, value) {
			values = append(values, value)
		}
	}
	sort.Strings(values)
	return values
}
