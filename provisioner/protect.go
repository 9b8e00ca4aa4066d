package provisioner

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"

	"github.com/toposnap/toposnap/internal/claimsource"
)

// Finalizers that keep a source alive while a volume is being filled from
// it: toposnap's own on VolumeSnapshots, external-provisioner's on claims
// (a name shared with other drivers' provisioners, so toposnap acts only on
// claims bound to its own driver's PVs: ownsSource).
const (
	FinalizerRestoreSource = "toposnap.io/restore-source-protection"
	FinalizerCloneSource   = "provisioner.storage.kubernetes.io/cloning-protection"
	// FinalizerSnapshotAsSource is upstream snapshot-controller's: it puts
	// it on every live VolumeSnapshot, whatever its driver, puts it back
	// when it is removed, and removes it from one being deleted that no
	// unbound claim names. Earlier toposnap versions protected their
	// restores' snapshots with it; toposnap now removes it only as upstream
	// would (legacyReleasable), for snapshots those versions left.
	FinalizerSnapshotAsSource = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
)

// protectSource adds the protection finalizer to the claim's snapshot or
// source claim before a copy starts. It is removed by syncSource, from the
// API's state alone, once no pending claim reads from the source: so a
// final error, a deleted claim or a restart of this process leaves none
// behind.
func (c *Controller) protectSource(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	source, ok := claimsource.Of(claim)
	if !ok || !source.IsSnapshot() && !source.IsClaim() {
		return nil
	}
	err := c.editSourceFinalizers(ctx, source, protectionFinalizer(source), nil)
	if err != nil {
		return fmt.Errorf("protect %s: %w", source, err)
	}
	return nil
}

// sourceKey names a source in the source queue: kind/namespace/name.
func sourceKey(source claimsource.Source) string {
	return source.Kind + "/" + source.Namespace + "/" + source.Name
}

// parseSourceKey is sourceKey's inverse.
func parseSourceKey(key string) (claimsource.Source, bool) {
	parts := strings.SplitN(key, "/", 3)
	if len(parts) != 3 {
		return claimsource.Source{}, false
	}
	source := claimsource.Source{Kind: parts[0], Namespace: parts[1], Name: parts[2]}
	if source.Kind == claimsource.KindSnapshot {
		source.APIGroup = claimsource.SnapshotGroup
	}
	return source, source.IsSnapshot() || source.IsClaim()
}

// readsFrom reports whether claim is a restore or clone of source whose
// volume is being made (FinalizerProvisioning, alive or being finished
// after its deletion). A pending claim that has not started does not hold
// its source: it would refuse a source being deleted anyway, so holding the
// source for it would only keep a deleted snapshot forever.
func readsFrom(claim *corev1.PersistentVolumeClaim, source claimsource.Source) bool {
	ref, ok := claimsource.Of(claim)
	if !ok || ref.Kind != source.Kind || ref.Namespace != source.Namespace || ref.Name != source.Name {
		return false
	}
	return claim.Spec.VolumeName == "" && slices.Contains(claim.Finalizers, FinalizerProvisioning)
}

// syncSource removes a source's protection finalizer once no claim reads
// from it any more. Upstream keeps it while any pending claim names the
// source, so a snapshot deleted while a restore of it waits unstarted is
// never deleted; toposnap keeps it only while a volume is being made.
// Another driver's source, or one whose driver is not known yet, is left
// alone: its finalizer is that driver's to remove.
func (c *Controller) syncSource(ctx context.Context, key string) error {
	source, ok := parseSourceKey(key)
	if !ok || !c.ownsSource(source) {
		return nil
	}
	claims, err := c.claims.List(labels.Everything())
	if err != nil {
		return err
	}
	var drop []string
	if !slices.ContainsFunc(claims, func(claim *corev1.PersistentVolumeClaim) bool { return readsFrom(claim, source) }) {
		drop = append(drop, protectionFinalizer(source))
	}
	if c.legacyReleasable(source, claims) {
		drop = append(drop, FinalizerSnapshotAsSource)
	}
	held := c.sourceFinalizers(source)
	drop = slices.DeleteFunc(drop, func(f string) bool { return !slices.Contains(held, f) })
	if len(drop) == 0 {
		return nil // nothing to remove: no write
	}
	if err := c.editSourceFinalizers(ctx, source, "", drop); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("unprotect %s: %w", source, err)
	}
	return nil
}

// protectionFinalizer is the finalizer toposnap puts on source.
func protectionFinalizer(source claimsource.Source) string {
	if source.IsSnapshot() {
		return FinalizerRestoreSource
	}
	return FinalizerCloneSource
}

// legacyReleasable: upstream's FinalizerSnapshotAsSource may go from a
// snapshot being deleted that no unbound claim names, exactly when
// upstream's snapshot-controller would remove it. Never from a live
// snapshot: that controller puts it back on every live snapshot, and
// removing it again would never end.
func (c *Controller) legacyReleasable(source claimsource.Source, claims []*corev1.PersistentVolumeClaim) bool {
	if !source.IsSnapshot() {
		return false
	}
	snap, err := c.snapshots.VolumeSnapshots(source.Namespace).Get(source.Name)
	if err != nil || snap.DeletionTimestamp == nil {
		return false
	}
	return !slices.ContainsFunc(claims, func(claim *corev1.PersistentVolumeClaim) bool {
		ref, ok := claimsource.Of(claim)
		return ok && claim.Spec.VolumeName == "" && ref.Kind == source.Kind && ref.Namespace == source.Namespace && ref.Name == source.Name
	})
}

// ownsSource reads the cache: is the source this driver's, by the facts a
// restore or clone checks before it protects its source (contentSource)?
// A VolumeSnapshot must be bound to a content of this driver bound back to
// it, a claim to a PV of this driver bound back to it. An unbound source,
// or one whose content or PV the cache lacks, is not known to be ours.
func (c *Controller) ownsSource(source claimsource.Source) bool {
	switch {
	case source.IsSnapshot():
		snap, err := c.snapshots.VolumeSnapshots(source.Namespace).Get(source.Name)
		if err != nil || snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil {
			return false
		}
		content, err := c.contents.Get(*snap.Status.BoundVolumeSnapshotContentName)
		return err == nil && content.Spec.Driver == c.driverName && contentBoundTo(content, snap)
	case source.IsClaim():
		claim, err := c.claims.PersistentVolumeClaims(source.Namespace).Get(source.Name)
		if err != nil || claim.Spec.VolumeName == "" {
			return false
		}
		pv, err := c.volumes.Get(claim.Spec.VolumeName)
		return err == nil && pv.Spec.CSI != nil && pv.Spec.CSI.Driver == c.driverName && volumeBoundTo(pv, claim)
	}
	return false
}

// contentBoundTo: the content's volumeSnapshotRef names this very snapshot.
func contentBoundTo(content *snapv1.VolumeSnapshotContent, snap *snapv1.VolumeSnapshot) bool {
	bound := content.Spec.VolumeSnapshotRef
	return bound.Namespace == snap.Namespace && bound.Name == snap.Name && bound.UID == snap.UID
}

// volumeBoundTo: the PV's claimRef names this very claim.
func volumeBoundTo(pv *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim) bool {
	bound := pv.Spec.ClaimRef
	return bound != nil && bound.Namespace == claim.Namespace && bound.Name == claim.Name && bound.UID == claim.UID
}

// sourceFinalizers reads the cache: the source's finalizers.
func (c *Controller) sourceFinalizers(source claimsource.Source) []string {
	switch {
	case source.IsSnapshot():
		if snap, err := c.snapshots.VolumeSnapshots(source.Namespace).Get(source.Name); err == nil {
			return snap.Finalizers
		}
	case source.IsClaim():
		if claim, err := c.claims.PersistentVolumeClaims(source.Namespace).Get(source.Name); err == nil {
			return claim.Finalizers
		}
	}
	return nil
}

// editSourceFinalizers adds the finalizer add (if not empty) to the source
// and removes those in remove, on the live object, retrying on conflicts;
// no write when nothing changes.
func (c *Controller) editSourceFinalizers(ctx context.Context, source claimsource.Source, add string, remove []string) error {
	edit := func(finalizers []string) ([]string, bool) {
		out := slices.DeleteFunc(slices.Clone(finalizers), func(f string) bool { return slices.Contains(remove, f) })
		if add != "" && !slices.Contains(out, add) {
			out = append(out, add)
		}
		return out, !slices.Equal(out, finalizers)
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		switch {
		case source.IsSnapshot():
			api := c.snapClient.SnapshotV1().VolumeSnapshots(source.Namespace)
			snap, err := api.Get(ctx, source.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			finalizers, changed := edit(snap.Finalizers)
			if !changed {
				return nil
			}
			snap.Finalizers = finalizers
			_, err = api.Update(ctx, snap, metav1.UpdateOptions{})
			return err
		case source.IsClaim():
			api := c.client.CoreV1().PersistentVolumeClaims(source.Namespace)
			claim, err := api.Get(ctx, source.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			finalizers, changed := edit(claim.Finalizers)
			if !changed {
				return nil
			}
			claim.Finalizers = finalizers
			_, err = api.Update(ctx, claim, metav1.UpdateOptions{})
			return err
		}
		return nil
	})
}
