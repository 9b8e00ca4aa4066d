package webhook

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// Names the StorageClass route knows.
const (
	// DriverName is toposnap's CSI driver (driver.Name; not imported so the
	// webhook does not link the driver).
	DriverName = "csi.toposnap.io"
	// NoProvisioner is the provisioner of classes for static local PVs.
	NoProvisioner = "kubernetes.io/no-provisioner"
	// AnnAllowImmediate set to "true" on a StorageClass keeps its
	// volumeBindingMode Immediate.
	AnnAllowImmediate = "toposnap.io/allow-immediate"
)

// topologyAware reports whether the class's volumes are placed by topology
// and so must wait for their pod's node: ours and static local PVs'.
func topologyAware(class *storagev1.StorageClass) bool {
	return class != nil && (class.Provisioner == DriverName || class.Provisioner == NoProvisioner)
}

// MutateStorageClass decides on a StorageClass CREATE. A topology-aware
// class is given volumeBindingMode WaitForFirstConsumer unless it is
// annotated AnnAllowImmediate: the API server has already defaulted a
// missing mode to Immediate by the time the webhook sees it, so Immediate
// cannot be told apart from "unset". A class whose allowedTopologies match
// none of the nodes is admitted with a warning naming where the nodes are.
// Other operations and other provisioners are admitted untouched (the
// binding mode is immutable after CREATE).
func MutateStorageClass(class *storagev1.StorageClass, create bool, nodes []*corev1.Node) Decision {
	if !create || !topologyAware(class) {
		return allow()
	}
	decision := allow()
	if immediate(class) && class.Annotations[AnnAllowImmediate] != "true" {
		decision.Patch = append(decision.Patch, PatchOperation{
			Op: "add", Path: "/volumeBindingMode", Value: string(storagev1.VolumeBindingWaitForFirstConsumer),
		})
		decision.Warnings = append(decision.Warnings, fmt.Sprintf(
			"StorageClass %s: volumeBindingMode set to WaitForFirstConsumer (was Immediate) so volumes are "+
				"created where their pod runs; annotate %s: \"true\" to keep Immediate", class.Name, AnnAllowImmediate))
	}
	if warning := unreachableClassWarning(class, nodes); warning != "" {
		decision.Warnings = append(decision.Warnings, warning)
	}
	return decision
}

// immediate reports whether the class binds immediately (also when the
// mode is unset, as the API server defaults it).
func immediate(class *storagev1.StorageClass) bool {
	return class.VolumeBindingMode == nil || *class.VolumeBindingMode == storagev1.VolumeBindingImmediate
}

// unreachableClassWarning says, when the class's allowedTopologies match
// none of the nodes, what they allow and where the nodes actually are; ""
// when some node matches, the class allows every node, or there are no
// nodes to judge by.
func unreachableClassWarning(class *storagev1.StorageClass, nodes []*corev1.Node) string {
	if len(class.AllowedTopologies) == 0 || len(nodes) == 0 {
		return ""
	}
	for _, node := range nodes {
		if allowedOnNode(class, nodeLabels(node)) {
			return ""
		}
	}
	// The API server may cut warnings at 256 characters: what is allowed
	// and where the nodes are come first.
	where := []string{"nodes are in zones [" + strings.Join(labelValues(nodes, topology.ZoneKey), ", ") + "]"}
	for _, key := range allowedKeys(class) {
		if key != topology.ZoneKey {
			where = append(where, fmt.Sprintf("have %s in [%s]", key, strings.Join(labelValues(nodes, key), ", ")))
		}
	}
	return fmt.Sprintf("StorageClass %s: allowedTopologies %s match no node; %s: its claims will stay Pending",
		class.Name, describeAllowed(class), strings.Join(where, ", "))
}
