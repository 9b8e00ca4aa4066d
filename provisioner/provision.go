package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/claimsource"
	"github.com/toposnap/toposnap/internal/topology"
)

// provision makes the claim's volume and publishes its PV. The claim holds
// FinalizerProvisioning from before the CreateVolume call until the PV
// exists, so a claim deleted meanwhile, even across a crash of this
// process, is finished and its volume deleted rather than leaked.
func (c *Controller) provision(ctx context.Context, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) error {
	// A data source of another kind belongs to that kind's volume populator,
	// which provisions a claim of its own and hands the volume over (as
	// external-provisioner assumes): no volume here, and no failure.
	if source, ok := claimsource.Of(claim); ok && !source.IsSnapshot() && !source.IsClaim() {
		c.recorder.Event(claim, corev1.EventTypeNormal, "Provisioning", "Assuming an external populator will provision the volume")
		return nil
	}
	resuming := slices.Contains(claim.Finalizers, FinalizerProvisioning)
	req, err := c.createRequest(ctx, claim, class, resuming)
	if errors.Is(err, errUnreachableSource) {
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed",
			"node %s cannot provision this claim, asking the scheduler to pick another node: %v", c.nodeName, err)
		return c.releaseClaim(ctx, claim, true)
	}
	if err != nil {
		c.recorder.Event(claim, corev1.EventTypeWarning, "ProvisioningFailed", err.Error())
		return err
	}
	if !resuming {
		if claim, err = c.editClaim(ctx, claim, func(claim *corev1.PersistentVolumeClaim) bool {
			if slices.Contains(claim.Finalizers, FinalizerProvisioning) {
				return false
			}
			claim.Finalizers = append(claim.Finalizers, FinalizerProvisioning)
			return true
		}); err != nil {
			return err
		}
	}
	if err := c.protectSource(ctx, claim); err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "Provisioning", "External provisioner is provisioning volume for claim %s/%s on node %s", claim.Namespace, claim.Name, c.nodeName)
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	resp, err := c.csi.CreateVolume(callCtx, req)
	cancel()
	if err != nil {
		c.metrics.provisions.WithLabelValues(status.Code(err).String()).Inc()
		switch classify(err) {
		case reschedule:
			// Nothing was made: let the scheduler (or another zone) pick again.
			c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed",
				"node %s cannot provision this claim, asking the scheduler to pick another node: %s", c.nodeName, status.Convert(err).Message())
			return c.releaseClaim(ctx, claim, true)
		case final:
			c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed", "failed to provision volume: %s", status.Convert(err).Message())
		}
		// The volume may exist or be on its way: the finalizer stays.
		return fmt.Errorf("create volume for %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	c.metrics.provisions.WithLabelValues("OK").Inc()
	c.capacityMayHaveChanged()
	pv := BuildPV(claim, class, c.driverName, resp.GetVolume())
	if err := c.createPV(ctx, pv); err != nil {
		return err
	}
	if err := c.releaseClaim(ctx, claim, false); err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "ProvisioningSucceeded", "Successfully provisioned volume %s on node %s", pv.Name, c.nodeName)
	klog.InfoS("Provisioned", "pvc", klog.KObj(claim), "pv", pv.Name, "volume", resp.GetVolume().GetVolumeId())
	return nil
}

// createPV publishes the PV of a volume just made. A PV of that name with
// another volume means this volume is a duplicate: it is deleted, not leaked.
func (c *Controller) createPV(ctx context.Context, pv *corev1.PersistentVolume) error {
	_, err := c.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create PV %s: %w", pv.Name, err)
	}
	existing, err := c.client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read existing PV %s: %w", pv.Name, err)
	}
	handle := pv.Spec.CSI.VolumeHandle
	if existing.Spec.CSI != nil && existing.Spec.CSI.Driver == pv.Spec.CSI.Driver && existing.Spec.CSI.VolumeHandle == handle {
		return nil // an earlier attempt got this far
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if _, err := c.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: handle}); err != nil {
		return fmt.Errorf("PV %s already holds another volume; delete duplicate volume %s: %w", pv.Name, handle, err)
	}
	klog.InfoS("Deleted a duplicate volume: the claim's PV holds another one", "pv", pv.Name, "volume", handle)
	return nil
}

// finishDeleted finishes the volume of a claim deleted while it was being
// made: create-or-find it by name (CreateVolume is idempotent), delete it,
// then let the claim go. A PV made for the claim owns the volume instead.
func (c *Controller) finishDeleted(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	if _, err := c.client.CoreV1().PersistentVolumes().Get(ctx, PVName(claim), metav1.GetOptions{}); err == nil {
		return c.releaseClaim(ctx, claim, false) // the PV's reclaim policy decides
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	className := volumehelpers.GetPersistentVolumeClaimClass(claim)
	class, err := c.classes.Get(className)
	if err != nil {
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningCleanupFailed",
			"the claim was deleted while its volume was being made, and its StorageClass %q is gone: the volume %s cannot be found to delete it; recreate the class", className, PVName(claim))
		return fmt.Errorf("finish deleted claim %s/%s: class: %w", claim.Namespace, claim.Name, err)
	}
	req, err := c.createRequest(ctx, claim, class, true)
	if err != nil {
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningCleanupFailed", "cannot finish the volume of this deleted claim: %v", err)
		return fmt.Errorf("finish deleted claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.csi.CreateVolume(callCtx, req)
	switch {
	case err == nil:
		volumeID := resp.GetVolume().GetVolumeId()
		if _, err := c.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: volumeID}); err != nil {
			return fmt.Errorf("delete volume %s of deleted claim %s/%s: %w", volumeID, claim.Namespace, claim.Name, err)
		}
		c.capacityMayHaveChanged()
		klog.InfoS("Deleted the volume of a claim deleted during provisioning", "pvc", klog.KObj(claim), "volume", volumeID)
	case classify(err) == retryInBackground:
		return fmt.Errorf("finish volume of deleted claim %s/%s: %w", claim.Namespace, claim.Name, err)
	default:
		klog.InfoS("No volume to delete for a claim deleted during provisioning", "pvc", klog.KObj(claim), "answer", status.Convert(err).Message())
	}
	return c.releaseClaim(ctx, claim, false)
}

// releaseClaim removes FinalizerProvisioning; with pickAgain also the
// placement (selected node or claimed zone), so the scheduler or another
// zone tries again.
func (c *Controller) releaseClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim, pickAgain bool) error {
	_, err := c.editClaim(ctx, claim, func(claim *corev1.PersistentVolumeClaim) bool {
		changed := false
		if slices.Contains(claim.Finalizers, FinalizerProvisioning) {
			claim.Finalizers = slices.DeleteFunc(claim.Finalizers, func(f string) bool { return f == FinalizerProvisioning })
			changed = true
		}
		if pickAgain {
			if _, ok := claim.Annotations[AnnProvisioningZone]; ok {
				// toposnap-controller routes an Immediate zone claim to the
				// next zone its class allows.
				attempts, _ := strconv.Atoi(claim.Annotations[AnnZoneAttempts])
				claim.Annotations[AnnZoneAttempts] = strconv.Itoa(attempts + 1)
			}
			for _, ann := range []string{AnnSelectedNode, AnnProvisioningZone} {
				if _, ok := claim.Annotations[ann]; ok {
					delete(claim.Annotations, ann)
					changed = true
				}
			}
		}
		return changed
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// claimForZone records that this zone provisions a zone claim. The
// update carries the claim's resourceVersion, so of several zones' owners
// racing for the claim exactly one wins; the others see a conflict and then
// the winner's annotation.
func (c *Controller) claimForZone(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	updated := claim.DeepCopy()
	if updated.Annotations == nil {
		updated.Annotations = map[string]string{}
	}
	updated.Annotations[AnnProvisioningZone] = c.zoneName()
	_, err := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil // another zone was first, or the claim changed: its event brings it back
	}
	if err != nil {
		return fmt.Errorf("claim %s/%s for zone %s: %w", claim.Namespace, claim.Name, c.zoneName(), err)
	}
	klog.InfoS("Claimed claim for this zone", "pvc", klog.KObj(claim), "zone", c.zoneName())
	return nil
}

// editClaim applies mutate to the live claim and writes it when it says it
// changed something, retrying on conflicts.
func (c *Controller) editClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim, mutate func(*corev1.PersistentVolumeClaim) bool) (*corev1.PersistentVolumeClaim, error) {
	api := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace)
	result := claim
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		live, err := api.Get(ctx, claim.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if live.UID != claim.UID {
			return apierrors.NewNotFound(corev1.Resource("persistentvolumeclaims"), claim.Name)
		}
		if !mutate(live) {
			result = live
			return nil
		}
		result, err = api.Update(ctx, live, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	return result, nil
}

// createRequest builds the CreateVolume call for a claim. resuming: the
// claim's volume may exist already, so a source being deleted is still
// read (its protection keeps it until the claim is done).
func (c *Controller) createRequest(ctx context.Context, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, resuming bool) (*csi.CreateVolumeRequest, error) {
	params, err := DriverParameters(class)
	if err != nil {
		return nil, err
	}
	caps, err := VolumeCapabilities(claim, class)
	if err != nil {
		return nil, err
	}
	var requirement *csi.TopologyRequirement
	if claim.Annotations[AnnSelectedNode] == c.nodeName {
		node, err := c.nodes.Get(c.nodeName)
		if err != nil {
			return nil, fmt.Errorf("read selected node %s: %w", c.nodeName, err)
		}
		if requirement, err = TopologyRequirement(c.nodeSegment, node.Labels, class); err != nil {
			return nil, err
		}
	} else if requirement, err = TopologyRequirement(topology.Segment(c.zoneLabels()), c.zoneLabels(), class); err != nil {
		return nil, err
	}
	request := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	req := &csi.CreateVolumeRequest{
		Name:                      PVName(claim),
		CapacityRange:             &csi.CapacityRange{RequiredBytes: request.Value()},
		VolumeCapabilities:        caps,
		Parameters:                params,
		AccessibilityRequirements: requirement,
	}
	source, err := c.contentSource(ctx, claim, resuming)
	if err != nil {
		return nil, err
	}
	req.VolumeContentSource = source
	return req, nil
}

// contentSource resolves a claim's dataSource with upstream's checks, and
// checks that the source really is the claim's namespace's: a content bound
// to another snapshot, or a PV bound to another claim, is refused.
func (c *Controller) contentSource(ctx context.Context, claim *corev1.PersistentVolumeClaim, resuming bool) (*csi.VolumeContentSource, error) {
	ref, ok := claimsource.Of(claim)
	if !ok {
		return nil, nil
	}
	if ref.Namespace != claim.Namespace {
		return nil, fmt.Errorf("dataSourceRef in namespace %s: data sources in another namespace are not supported", ref.Namespace)
	}
	request := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	switch {
	case ref.IsSnapshot():
		snap, err := c.getSnapshot(ctx, claim.Namespace, ref.Name)
		if err != nil {
			return nil, fmt.Errorf("dataSource VolumeSnapshot %s/%s: %w", claim.Namespace, ref.Name, err)
		}
		if snap.DeletionTimestamp != nil && !resuming {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s is being deleted", claim.Namespace, ref.Name)
		}
		if snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s is not bound to a content yet", claim.Namespace, ref.Name)
		}
		if snap.Status.ReadyToUse == nil || !*snap.Status.ReadyToUse {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s is not ready to use yet", claim.Namespace, ref.Name)
		}
		content, err := c.getContent(ctx, *snap.Status.BoundVolumeSnapshotContentName)
		if err != nil {
			return nil, fmt.Errorf("VolumeSnapshotContent %s: %w", *snap.Status.BoundVolumeSnapshotContentName, err)
		}
		if !contentBoundTo(content, snap) {
			bound := content.Spec.VolumeSnapshotRef
			return nil, fmt.Errorf("VolumeSnapshotContent %s is bound to VolumeSnapshot %s/%s (uid %q), not to %s/%s (uid %q)",
				content.Name, bound.Namespace, bound.Name, bound.UID, snap.Namespace, snap.Name, snap.UID)
		}
		if content.Spec.Driver != c.driverName {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s belongs to driver %s, not %s", claim.Namespace, ref.Name, content.Spec.Driver, c.driverName)
		}
		if content.Status == nil || content.Status.SnapshotHandle == nil {
			return nil, fmt.Errorf("VolumeSnapshotContent %s has no snapshot handle yet", content.Name)
		}
		if err := c.checkSnapshotReachable(content.Annotations[topology.AnnAccessibleTopology]); err != nil {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s: %w", claim.Namespace, ref.Name, err)
		}
		if snap.Status.RestoreSize != nil && request.Cmp(*snap.Status.RestoreSize) < 0 {
			return nil, fmt.Errorf("requested %s is smaller than VolumeSnapshot %s/%s's restoreSize %s", request.String(), claim.Namespace, ref.Name, snap.Status.RestoreSize.String())
		}
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: *content.Status.SnapshotHandle}}}, nil
	case ref.IsClaim():
		source, err := c.getClaim(ctx, claim.Namespace, ref.Name)
		if err != nil {
			return nil, fmt.Errorf("dataSource PersistentVolumeClaim %s/%s: %w", claim.Namespace, ref.Name, err)
		}
		if source.DeletionTimestamp != nil && !resuming {
			return nil, fmt.Errorf("source claim %s/%s is being deleted", claim.Namespace, ref.Name)
		}
		if source.Spec.VolumeName == "" {
			return nil, fmt.Errorf("source claim %s/%s is not bound yet", claim.Namespace, ref.Name)
		}
		pv, err := c.getPV(ctx, source.Spec.VolumeName)
		if err != nil {
			return nil, fmt.Errorf("source PV %s: %w", source.Spec.VolumeName, err)
		}
		if !volumeBoundTo(pv, source) {
			return nil, fmt.Errorf("source claim %s/%s names PV %s, which is not bound to it", claim.Namespace, ref.Name, pv.Name)
		}
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.driverName {
			return nil, fmt.Errorf("source claim %s/%s is not a %s volume", claim.Namespace, ref.Name, c.driverName)
		}
		sourceSize := source.Spec.Resources.Requests[corev1.ResourceStorage]
		if request.Cmp(sourceSize) < 0 {
			return nil, fmt.Errorf("requested %s is smaller than source claim %s/%s's %s", request.String(), claim.Namespace, ref.Name, sourceSize.String())
		}
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: pv.Spec.CSI.VolumeHandle}}}, nil
	}
	return nil, fmt.Errorf("dataSource kind %s is not supported (use a VolumeSnapshot or a PersistentVolumeClaim)", ref.Kind)
}

// errUnreachableSource: the claim's source cannot be read from this node, so
// the scheduler must pick another (before any CSI call is wasted on it).
var errUnreachableSource = errors.New("not reachable from this node")

// checkSnapshotReachable narrows a restore to where its snapshot can be
// read, from the content's toposnap.io/accessible-topology annotation
// (absent: no constraint known).
func (c *Controller) checkSnapshotReachable(annotation string) error {
	if annotation == "" {
		return nil
	}
	segments, err := topology.DecodeSegments(annotation)
	if err != nil || len(segments) == 0 {
		return nil
	}
	if topology.ReachableFrom(c.nodeLabels(), segments) {
		return nil
	}
	return fmt.Errorf("its snapshot can be restored only in %v, which node %s is not in: %w", segments, c.nodeName, errUnreachableSource)
}
