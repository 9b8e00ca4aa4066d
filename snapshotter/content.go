package snapshotter

import (
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
)

// Names shared with the upstream snapshot controller and sidecar.
const (
	AnnDefaultClass = "snapshot.storage.kubernetes.io/is-default-class"
	// FinalizerContentBound keeps a content until its backend snapshot is handled.
	FinalizerContentBound = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
	// FinalizerSnapshotBound keeps a VolumeSnapshot until its content is handled.
	FinalizerSnapshotBound = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
	// FinalizerSnapshotAsSource keeps a VolumeSnapshot while a restore reads it.
	FinalizerSnapshotAsSource = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
	// FinalizerRestoreSource is toposnap's own restore-source protection on
	// a VolumeSnapshot: upstream's snapshot-controller adds and removes
	// FinalizerSnapshotAsSource itself, so the provisioner uses this one.
	// A snapshot is kept while either is on it.
	FinalizerRestoreSource = "toposnap.io/restore-source-protection"
	// AnnSnapshotBeingDeleted marks a content whose VolumeSnapshot is being
	// deleted: only then may a bound content's backend snapshot go. Upstream
	// keeps it in its pkg/utils, not in the client API module.
	AnnSnapshotBeingDeleted = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"
	prefixReserved          = "csi.storage.k8s.io/"
)

// AnnDeletingSnapshot records on a content, at the resourceVersion the
// decision was made on, that its backend snapshot (the value, if known) is
// being deleted: a content changed meanwhile (bound by another binder, say)
// makes the update fail and the decision is made again. Nothing reads it.
const AnnDeletingSnapshot = "toposnap.io/deleting-snapshot"

// ContentName is the name of the content of a dynamically cut snapshot.
func ContentName(snap *snapv1.VolumeSnapshot) string { return "snapcontent-" + string(snap.UID) }

// SnapshotName is the CSI name the snapshot is cut under: stable across
// retries and restarts, so CreateSnapshot is idempotent.
func SnapshotName(content *snapv1.VolumeSnapshotContent) string {
	return "snapshot-" + string(content.Spec.VolumeSnapshotRef.UID)
}

// DefaultClass picks the driver's default VolumeSnapshotClass: exactly one
// must be marked default.
func DefaultClass(classes []*snapv1.VolumeSnapshotClass, driver string) (*snapv1.VolumeSnapshotClass, error) {
	var defaults []*snapv1.VolumeSnapshotClass
	for _, class := range classes {
		if class.Driver == driver && class.Annotations[AnnDefaultClass] == "true" {
			defaults = append(defaults, class)
		}
	}
	switch len(defaults) {
	case 0:
		return nil, fmt.Errorf("no default VolumeSnapshotClass for driver %s; set spec.volumeSnapshotClassName", driver)
	case 1:
		return defaults[0], nil
	}
	names := make([]string, 0, len(defaults))
	for _, class := range defaults {
		names = append(names, class.Name)
	}
	return nil, fmt.Errorf("%d default VolumeSnapshotClasses for driver %s (%s); keep one", len(defaults), driver, strings.Join(names, ", "))
}

// BuildContent describes the content for a dynamic snapshot of volumeHandle.
func BuildContent(snap *snapv1.VolumeSnapshot, class *snapv1.VolumeSnapshotClass, volumeHandle string) *snapv1.VolumeSnapshotContent {
	return &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: ContentName(snap), Finalizers: []string{FinalizerContentBound}, Labels: route.Carry(snap.Labels)},
		Spec: snapv1.VolumeSnapshotContentSpec{
			VolumeSnapshotRef: corev1.ObjectReference{
				Kind: "VolumeSnapshot", APIVersion: snapv1.SchemeGroupVersion.String(),
				Namespace: snap.Namespace, Name: snap.Name, UID: snap.UID,
			},
			DeletionPolicy:          class.DeletionPolicy,
			Driver:                  class.Driver,
			VolumeSnapshotClassName: ptr.To(class.Name),
			Source:                  snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr.To(volumeHandle)},
		},
	}
}

// SnapshotParameters are the class parameters passed to CreateSnapshot.
func SnapshotParameters(class *snapv1.VolumeSnapshotClass) map[string]string {
	params := map[string]string{}
	if class == nil {
		return params
	}
	for k, v := range class.Parameters {
		if !strings.HasPrefix(k, prefixReserved) {
			params[k] = v
		}
	}
	return params
}

// ContentStatus turns a CSI snapshot into a content's status.
func ContentStatus(snapshot *csi.Snapshot) *snapv1.VolumeSnapshotContentStatus {
	status := &snapv1.VolumeSnapshotContentStatus{
		SnapshotHandle: ptr.To(snapshot.GetSnapshotId()),
		ReadyToUse:     ptr.To(snapshot.GetReadyToUse()),
		RestoreSize:    ptr.To(snapshot.GetSizeBytes()),
	}
	if snapshot.GetCreationTime() != nil {
		status.CreationTime = ptr.To(snapshot.GetCreationTime().AsTime().UnixNano())
	}
	return status
}

// TopologyAnnotation encodes a snapshot's accessible topology for the
// content's topology.AnnAccessibleTopology annotation.
func TopologyAnnotation(snapshot *csi.Snapshot) (string, error) {
	segments := make([]topology.Segment, 0, len(snapshot.GetAccessibleTopology()))
	for _, t := range snapshot.GetAccessibleTopology() {
		segments = append(segments, t.GetSegments())
	}
	return topology.EncodeSegments(segments)
}

// SnapshotError is a status error entry with a message.
func SnapshotError(message string) *snapv1.VolumeSnapshotError {
	now := metav1.Now()
	return &snapv1.VolumeSnapshotError{Time: &now, Message: ptr.To(message)}
}

// SegmentsOfAffinity reads a PV's nodeAffinity as topology segments, one
// per selector term, from its single-valued In expressions: where a volume
// (and so a snapshot cut from it) is reachable.
func SegmentsOfAffinity(pv *corev1.PersistentVolume) []topology.Segment {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return nil
	}
	var segments []topology.Segment
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		segment := topology.Segment{}
		for _, expr := range term.MatchExpressions {
			if expr.Operator == corev1.NodeSelectorOpIn && len(expr.Values) == 1 {
				segment[expr.Key] = expr.Values[0]
			}
		}
		if len(segment) > 0 {
			segments = append(segments, segment)
		}
	}
	return segments
}
