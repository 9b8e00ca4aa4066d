package webhook

import (
	"context"
	"fmt"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/toposnap/toposnap/internal/claimsource"
)

// annDefaultStorageClass marks the cluster's default StorageClass.
const annDefaultStorageClass = "storageclass.kubernetes.io/is-default-class"

// dataSource is where a new claim's data comes from (see claimsource).
type dataSource = claimsource.Source

// dataSourceOf returns the claim's data source, or false when it has none.
var dataSourceOf = claimsource.Of

// ValidateClaim decides on a PersistentVolumeClaim CREATE. A claim of a
// toposnap class that restores a VolumeSnapshot or clones a claim is
// denied when the restore or clone cannot work, with every reason and what
// to change; a snapshot that is not ready yet only earns a warning. Claims
// without a data source, of other drivers' classes, and updates are
// admitted untouched. An error means the state could not be read.
func ValidateClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim, create bool, state State) (Decision, error) {
	if !create || claim == nil {
		return allow(), nil
	}
	source, ok := dataSourceOf(claim)
	if !ok {
		return allow(), nil
	}
	class, err := claimClass(ctx, claim, state)
	if err != nil {
		return Decision{}, err
	}
	if class == nil {
		if name := claim.Spec.StorageClassName; name != nil && *name != "" {
			return allow(fmt.Sprintf("StorageClass %s not found: the claim's %s was not checked", *name, source)), nil
		}
		return allow(), nil
	}
	if class.Provisioner != DriverName {
		return allow(), nil
	}
	switch {
	case source.Kind == "VolumeSnapshot":
		return validateRestore(ctx, claim, class, source, state)
	case source.Kind == "PersistentVolumeClaim" && source.APIGroup == "":
		return validateClone(ctx, claim, class, source, state)
	}
	return allow(), nil
}

// claimClass is the claim's StorageClass: the named one, or the default
// one when the claim names none; nil when it has none or it is missing.
func claimClass(ctx context.Context, claim *corev1.PersistentVolumeClaim, state State) (*storagev1.StorageClass, error) {
	if name := claim.Spec.StorageClassName; name != nil {
		if *name == "" {
			return nil, nil
		}
		return state.StorageClass(ctx, *name)
	}
	classes, err := state.StorageClasses()
	if err != nil {
		return nil, err
	}
	var chosen *storagev1.StorageClass
	for _, class := range classes {
		// As the DefaultStorageClass admission plugin: the newest default wins.
		if class.Annotations[annDefaultStorageClass] == "true" &&
			(chosen == nil || chosen.CreationTimestamp.Before(&class.CreationTimestamp)) {
			chosen = class
		}
	}
	return chosen, nil
}

// requestedStorage is the storage a claim requests (zero when unset).
func requestedStorage(claim *corev1.PersistentVolumeClaim) resource.Quantity {
	return claim.Spec.Resources.Requests[corev1.ResourceStorage]
}

// validateRestore checks a restore from source, a VolumeSnapshot.
func validateRestore(ctx context.Context, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, source dataSource, state State) (Decision, error) {
	if source.APIGroup != snapv1.GroupName {
		return deny(fmt.Sprintf("data source %s has apiGroup %q: set apiGroup to %s", source, source.APIGroup, snapv1.GroupName)), nil
	}
	snapshot, err := state.VolumeSnapshot(ctx, source.Namespace, source.Name)
	if err != nil {
		return Decision{}, err
	}
	if snapshot == nil {
		return deny(fmt.Sprintf("%s not found: create the VolumeSnapshot first, or name an existing one in the claim's data source", source)), nil
	}
	content, err := boundContent(ctx, snapshot, state)
	if err != nil {
		return Decision{}, err
	}
	decision := allow()
	if !snapshotReady(snapshot) {
		decision.Warnings = append(decision.Warnings, fmt.Sprintf(
			"%s is not ready to use yet: the claim stays Pending until it is", source))
	}
	if content != nil && content.Spec.Driver != class.Provisioner {
		decision.Reasons = append(decision.Reasons, fmt.Sprintf(
			"%s was taken by driver %s (VolumeSnapshotContent %s) but StorageClass %s provisions with %s: restore it with a StorageClass of driver %s",
			source, content.Spec.Driver, content.Name, class.Name, class.Provisioner, content.Spec.Driver))
	}
	if restoreSize := snapshotRestoreSize(snapshot, content); restoreSize != nil {
		if request := requestedStorage(claim); request.Cmp(*restoreSize) < 0 {
			decision.Reasons = append(decision.Reasons, fmt.Sprintf(
				"the claim requests %s, less than %s's restoreSize %s: request at least %s",
				request.String(), source, restoreSize.String(), restoreSize.String()))
		}
	}
	if content != nil {
		nodes, err := state.Nodes()
		if err != nil {
			return Decision{}, err
		}
		reason, warning := restoreTopology(class, source, content, nodes)
		if reason != "" {
			decision.Reasons = append(decision.Reasons, reason)
		}
		if warning != "" {
			decision.Warnings = append(decision.Warnings, warning)
		}
	}
	if len(decision.Reasons) > 0 {
		decision.Allowed = false
	}
	return decision, nil
}

// boundContent is the snapshot's VolumeSnapshotContent: the bound one, or
// the pre-provisioned one it names; nil when neither exists (yet).
func boundContent(ctx context.Context, snapshot *snapv1.VolumeSnapshot, state State) (*snapv1.VolumeSnapshotContent, error) {
	name := ""
	if snapshot.Status != nil && snapshot.Status.BoundVolumeSnapshotContentName != nil {
		name = *snapshot.Status.BoundVolumeSnapshotContentName
	} else if snapshot.Spec.Source.VolumeSnapshotContentName != nil {
		name = *snapshot.Spec.Source.VolumeSnapshotContentName
	}
	if name == "" {
		return nil, nil
	}
	return state.VolumeSnapshotContent(ctx, name)
}

// snapshotReady reports whether the snapshot says it can be restored.
func snapshotReady(snapshot *snapv1.VolumeSnapshot) bool {
	return snapshot.Status != nil && snapshot.Status.ReadyToUse != nil && *snapshot.Status.ReadyToUse
}

// snapshotRestoreSize is the smallest volume the snapshot fits in, from the
// snapshot's status or else its content's; nil when neither knows yet.
func snapshotRestoreSize(snapshot *snapv1.VolumeSnapshot, content *snapv1.VolumeSnapshotContent) *resource.Quantity {
	if snapshot.Status != nil && snapshot.Status.RestoreSize != nil {
		return snapshot.Status.RestoreSize
	}
	if content != nil && content.Status != nil && content.Status.RestoreSize != nil {
		return resource.NewQuantity(*content.Status.RestoreSize, resource.BinarySI)
	}
	return nil
}

// validateClone checks a clone of source, a claim in the same namespace.
func validateClone(ctx context.Context, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, source dataSource, state State) (Decision, error) {
	sourceClaim, err := state.Claim(ctx, source.Namespace, source.Name)
	if err != nil {
		return Decision{}, err
	}
	if sourceClaim == nil {
		return deny(fmt.Sprintf("%s to clone not found: create it first, or name an existing claim in the claim's data source", source)), nil
	}
	decision := allow()
	sourceClass, err := claimClass(ctx, sourceClaim, state)
	if err != nil {
		return Decision{}, err
	}
	switch {
	case sourceClass == nil:
		decision.Warnings = append(decision.Warnings, fmt.Sprintf(
			"the StorageClass of %s is not known: its driver was not checked", source))
	case sourceClass.Provisioner != class.Provisioner:
		decision.Reasons = append(decision.Reasons, fmt.Sprintf(
			"%s is of StorageClass %s (driver %s) but StorageClass %s provisions with %s: clone it with a StorageClass of driver %s",
			source, sourceClass.Name, sourceClass.Provisioner, class.Name, class.Provisioner, sourceClass.Provisioner))
	}
	sourceSize := requestedStorage(sourceClaim)
	if request := requestedStorage(claim); request.Cmp(sourceSize) < 0 {
		decision.Reasons = append(decision.Reasons, fmt.Sprintf(
			"the claim requests %s, less than %s's request %s: request at least %s",
			request.String(), source, sourceSize.String(), sourceSize.String()))
	}
	if len(decision.Reasons) > 0 {
		decision.Allowed = false
	}
	return decision, nil
}
