package provisioner

import (
	"fmt"
	"maps"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
)

// Annotations and finalizers shared with upstream Kubernetes components.
const (
	AnnSelectedNode        = "volume.kubernetes.io/selected-node"
	AnnProvisionedBy       = "pv.kubernetes.io/provisioned-by"
	AnnStorageProvisioner  = "volume.kubernetes.io/storage-provisioner"
	AnnBetaStorageProvider = "volume.beta.kubernetes.io/storage-provisioner"
	// FinalizerVolume keeps a Delete-policy PV until its backend volume is gone.
	FinalizerVolume = "external-provisioner.volume.kubernetes.io/finalizer"
	// FinalizerProvisioning keeps a claim from the moment its volume may
	// exist until its PV does, so a claim deleted in between (even across
	// a crash) gets its volume deleted, not leaked. toposnap's own: upstream
	// keeps this state in memory only.
	FinalizerProvisioning = "toposnap.io/provisioning-protection"
	// AnnProvisioningZone on an immediate zone claim names the zone
	// ("region/zone") whose Lease holder provisions it: one zone, not one
	// volume per zone.
	AnnProvisioningZone = "toposnap.io/provisioning-zone"
	// AnnZoneAttempts counts the zones that gave an Immediate zone claim
	// back (out of space, say): toposnap-controller routes it to the next
	// zone its class allows.
	AnnZoneAttempts = "toposnap.io/zone-attempts"
	// prefixReserved marks class parameters meant for the provisioner, not the driver.
	prefixReserved = "csi.storage.k8s.io/"
)

// knownParameters are the StorageClass parameters the driver understands.
var knownParameters = map[string]bool{"scope": true, "toposnap.io/placement": true, "nestedSubvolumes": true}

// DriverParameters returns the class parameters to pass to CreateVolume, or
// an error naming an unknown one (a typo in a class must not be ignored).
func DriverParameters(class *storagev1.StorageClass) (map[string]string, error) {
	params := map[string]string{}
	var unknown []string
	for key, value := range class.Parameters {
		switch {
		case strings.HasPrefix(key, prefixReserved):
			continue
		case knownParameters[key]:
			params[key] = value
		default:
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("StorageClass %s has unknown parameter(s) %s; known: scope, toposnap.io/placement, nestedSubvolumes",
			class.Name, strings.Join(unknown, ", "))
	}
	if _, err := topology.ParseScope(params["scope"]); err != nil {
		return nil, fmt.Errorf("StorageClass %s: %w", class.Name, err)
	}
	switch v := params["nestedSubvolumes"]; v {
	case "", "deny", "allow":
	default:
		return nil, fmt.Errorf("StorageClass %s: parameter nestedSubvolumes is %q; want deny (the default) or allow", class.Name, v)
	}
	return params, nil
}

// TopologyRequirement builds CreateVolume's accessibility requirements as
// external-provisioner does for a delayed-binding claim: the selected node's
// segment is the only requisite and the preferred one, after checking that
// the class's allowedTopologies admit it. A node the class does not allow is
// an error (the scheduler should not have picked it).
func TopologyRequirement(nodeSegment topology.Segment, nodeLabels map[string]string, class *storagev1.StorageClass) (*csi.TopologyRequirement, error) {
	if !AllowedOnNode(class, nodeLabels) {
		return nil, fmt.Errorf("StorageClass %s allowedTopologies %s do not include the selected node", class.Name, describeAllowed(class))
	}
	seg := &csi.Topology{Segments: maps.Clone(nodeSegment)}
	return &csi.TopologyRequirement{Requisite: []*csi.Topology{seg}, Preferred: []*csi.Topology{seg}}, nil
}

// AllowedOnNode reports whether a node with these labels satisfies the
// class's allowedTopologies.
func AllowedOnNode(class *storagev1.StorageClass, labels map[string]string) bool {
	return topology.MatchesTerms(class.AllowedTopologies, labels)
}

func describeAllowed(class *storagev1.StorageClass) string {
	return "[" + topology.DescribeTerms(class.AllowedTopologies) + "]"
}

// VolumeCapabilities maps a claim's access modes and volume mode to CSI.
func VolumeCapabilities(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) ([]*csi.VolumeCapability, error) {
	accessType := func() *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: class.MountOptions}}}
	}
	if isBlock(claim) {
		accessType = func() *csi.VolumeCapability {
			return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
		}
	}
	var caps []*csi.VolumeCapability
	for _, mode := range claim.Spec.AccessModes {
		var csiMode csi.VolumeCapability_AccessMode_Mode
		switch mode {
		case corev1.ReadWriteOnce:
			csiMode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
		case corev1.ReadWriteOncePod:
			csiMode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		case corev1.ReadOnlyMany:
			csiMode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		case corev1.ReadWriteMany:
			csiMode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		default:
			return nil, fmt.Errorf("access mode %q is not supported", mode)
		}
		capability := accessType()
		capability.AccessMode = &csi.VolumeCapability_AccessMode{Mode: csiMode}
		caps = append(caps, capability)
	}
	if len(caps) == 0 {
		return nil, fmt.Errorf("claim has no access modes")
	}
	return caps, nil
}

// isBlock reports whether the claim asks for a raw block volume.
func isBlock(claim *corev1.PersistentVolumeClaim) bool {
	return claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == corev1.PersistentVolumeBlock
}

// NodeAffinity turns CSI accessible topologies into a PV's nodeAffinity:
// one selector term per topology (ORed), one expression per key (ANDed).
func NodeAffinity(topologies []*csi.Topology) *corev1.VolumeNodeAffinity {
	if len(topologies) == 0 {
		return nil
	}
	terms := make([]corev1.NodeSelectorTerm, 0, len(topologies))
	for _, t := range topologies {
		keys := make([]string, 0, len(t.GetSegments()))
		for k := range t.GetSegments() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var term corev1.NodeSelectorTerm
		for _, k := range keys {
			term.MatchExpressions = append(term.MatchExpressions, corev1.NodeSelectorRequirement{
				Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{t.GetSegments()[k]},
			})
		}
		terms = append(terms, term)
	}
	return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: terms}}
}

// PVName is the name of the PV provisioned for a claim.
func PVName(claim *corev1.PersistentVolumeClaim) string { return "pvc-" + string(claim.UID) }

// BuildPV describes the PV for a provisioned volume, pre-bound to its claim.
func BuildPV(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, driverName string, volume *csi.Volume) *corev1.PersistentVolume {
	reclaim := corev1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	volumeMode := corev1.PersistentVolumeFilesystem
	if isBlock(claim) {
		volumeMode = corev1.PersistentVolumeBlock
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        PVName(claim),
			Annotations: map[string]string{AnnProvisionedBy: driverName},
			Labels:      route.Carry(claim.Labels),
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(volume.GetCapacityBytes(), resource.BinarySI)},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              class.Name,
			MountOptions:                  class.MountOptions,
			VolumeMode:                    &volumeMode,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID, ResourceVersion: claim.ResourceVersion,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver:           driverName,
				VolumeHandle:     volume.GetVolumeId(),
				VolumeAttributes: volume.GetVolumeContext(),
			}},
			NodeAffinity: NodeAffinity(volume.GetAccessibleTopology()),
		},
	}
	if reclaim == corev1.PersistentVolumeReclaimDelete {
		pv.Finalizers = []string{FinalizerVolume}
	}
	return pv
}

// errorClass says what to do after a failed CreateVolume.
type errorClass int

const (
	// retryInBackground: the operation may still be running or may succeed
	// on retry; keep retrying even if the claim goes away, or a volume leaks.
	retryInBackground errorClass = iota
	// reschedule: this node cannot serve the claim; let the scheduler pick again.
	reschedule
	// final: the request is wrong; retry with backoff, report to the user.
	final
)

// classify maps a CreateVolume error as upstream's external-provisioner does.
func classify(err error) errorClass {
	st, ok := status.FromError(err)
	if !ok {
		return retryInBackground
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted:
		return retryInBackground
	case codes.ResourceExhausted:
		return reschedule
	}
	return final
}
