package webhook

import (
	"fmt"
	"strings"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// restoreTopology checks that a claim of class can be restored from the
// snapshot whose content is given: some node must lie in one of the
// snapshot's segments (content annotation topology.AnnAccessibleTopology)
// and be allowed by the class's allowedTopologies. It returns a denial
// reason when nodes can reach the snapshot but the class allows none of
// them, and a warning when the annotation cannot be read or no node can
// reach the snapshot now (nodes may come back; the class is not at fault).
// A content without the annotation can be restored anywhere.
func restoreTopology(class *storagev1.StorageClass, source dataSource, content *snapv1.VolumeSnapshotContent, nodes []*corev1.Node) (reason, warning string) {
	value, ok := content.Annotations[topology.AnnAccessibleTopology]
	if !ok {
		return "", ""
	}
	segments, err := topology.DecodeSegments(value)
	if err != nil {
		return "", fmt.Sprintf("VolumeSnapshotContent %s: %v: where %s can be restored was not checked", content.Name, err, source)
	}
	if len(segments) == 0 {
		return "", ""
	}
	var reaching []string
	for _, node := range nodes {
		labels := nodeLabels(node)
		if !topology.ReachableFrom(labels, segments) {
			continue
		}
		if allowedOnNode(class, labels) {
			return "", ""
		}
		reaching = append(reaching, node.Name)
	}
	if len(reaching) == 0 {
		return "", fmt.Sprintf("no node is in %s's topology %s now: the claim stays Pending until one is",
			source, describeSegments(segments))
	}
	return fmt.Sprintf("StorageClass %s allows %s but %s can only be restored in %s (nodes %s), and no node is in both: "+
		"use a StorageClass whose allowedTopologies include the snapshot's topology",
		class.Name, describeAllowed(class), source, describeSegments(segments), strings.Join(reaching, ", ")), ""
}
