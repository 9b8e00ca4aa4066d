package provisioner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/volumeid"
)

// shouldReclaim says whether a PV's backend volume is to be deleted now: a
// Delete-policy PV this driver provisioned, Released by its claim. Only
// Released, as upstream: a Bound PV that someone deletes keeps its data
// (its finalizers hold it, Terminating) until its claim lets it go; a
// Failed PV waits for a human.
func (c *Controller) shouldReclaim(pv *corev1.PersistentVolume) bool {
	return pv.Spec.CSI != nil && pv.Spec.CSI.Driver == c.driverName &&
		pv.Annotations[AnnProvisionedBy] == c.driverName &&
		pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete &&
		pv.Status.Phase == corev1.VolumeReleased
}

// reclaimRefusal says why the backend volume of a Released PV must stay,
// from live reads: the PV, the claim its claimRef names (nil if there is
// none) and the other PVs that name its volume handle. "" lets it go.
//
// A volume is deleted for the PV it was made for only: toposnap creates a
// claim's volume under the name of its PV, and the handle carries the
// name's hash. So a PV forged around another volume's handle (under
// another name) never deletes it, and neither does a second PV an operator
// made for a re-imported volume. (A populator may re-point the PV at
// another claim: the claim it names now is the one that must be gone.)
func reclaimRefusal(pv *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim, sharing []string) string {
	if refusal := handleRefusal(pv); refusal != "" {
		return refusal
	}
	ref := pv.Spec.ClaimRef
	switch {
	case claim != nil && claim.UID == ref.UID:
		return fmt.Sprintf("claim %s/%s of uid %s still exists", claim.Namespace, claim.Name, claim.UID)
	case len(sharing) > 0:
		return fmt.Sprintf("PV %s also names the volume; delete or re-point it first", strings.Join(sharing, ", "))
	}
	return ""
}

// handleRefusal is the part of reclaimRefusal the PV alone decides.
func handleRefusal(pv *corev1.PersistentVolume) string {
	switch {
	case pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID == "":
		return "the PV names no claim uid"
	case !volumeid.CreatedUnder(pv.Spec.CSI.VolumeHandle, pv.Name):
		return fmt.Sprintf("the volume was not created for PV %s (its handle names another CSI volume name)", pv.Name)
	}
	return ""
}

// confirmReclaim reads the PV, its claim and the PVs that could share its
// handle from the API server. It returns the live PV (nil if it is gone or
// no longer to be reclaimed) and a refusal (reclaimRefusal).
func (c *Controller) confirmReclaim(ctx context.Context, cached *corev1.PersistentVolume) (*corev1.PersistentVolume, string, error) {
	pv, err := c.client.CoreV1().PersistentVolumes().Get(ctx, cached.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read PV %s: %w", cached.Name, err)
	}
	if pv.UID != cached.UID || !c.shouldReclaim(pv) {
		return nil, "", nil
	}
	if refusal := handleRefusal(pv); refusal != "" {
		return pv, refusal, nil // no further reads for a PV that cannot pass
	}
	var claim *corev1.PersistentVolumeClaim
	if ref := pv.Spec.ClaimRef; ref != nil && ref.Name != "" {
		claim, err = c.client.CoreV1().PersistentVolumeClaims(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			claim, err = nil, nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("read claim %s/%s of PV %s: %w", ref.Namespace, ref.Name, pv.Name, err)
		}
	}
	sharing, err := c.pvsNaming(ctx, pv)
	if err != nil {
		return nil, "", err
	}
	return pv, reclaimRefusal(pv, claim, sharing), nil
}

// pvsNaming lists the other PVs of the driver that name pv's volume handle,
// from the API server's watch cache (resourceVersion 0: no etcd read).
// Routed, a PV of the same volume is routed like it (by affinity or by the
// handle's owner) or not routed yet: those two selections are read, not
// the whole cluster. Unrouted, every PV is.
func (c *Controller) pvsNaming(ctx context.Context, pv *corev1.PersistentVolume) ([]string, error) {
	selectors := []string{""}
	if c.routed {
		selectors = []string{"!" + route.Label}
		if own := route.Of(pv.Labels); own != "" {
			selectors = append(selectors, route.Label+"="+own)
		}
	}
	var sharing []string
	for _, selector := range selectors {
		options := metav1.ListOptions{LabelSelector: selector, ResourceVersion: "0"}
		for {
			page, err := c.client.CoreV1().PersistentVolumes().List(ctx, options)
			if err != nil {
				return nil, fmt.Errorf("list PVs naming volume %s: %w", pv.Spec.CSI.VolumeHandle, err)
			}
			for i := range page.Items {
				other := &page.Items[i]
				if other.UID != pv.UID && other.Spec.CSI != nil && other.Spec.CSI.Driver == c.driverName &&
					other.Spec.CSI.VolumeHandle == pv.Spec.CSI.VolumeHandle {
					sharing = append(sharing, other.Name)
				}
			}
			if options.Continue = page.Continue; options.Continue == "" {
				break
			}
		}
	}
	return sharing, nil
}

// syncVolume deletes the backend volume of a released Delete-policy PV this
// node is responsible for, then lets the PV go.
func (c *Controller) syncVolume(ctx context.Context, key string) error {
	pv, err := c.volumes.Get(key)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !c.shouldReclaim(pv) || !c.responsibleFor(pv) {
		return nil
	}
	// The cache may be stale and a PV may be forged (any node token can
	// create one naming any handle): the delete is decided on live reads.
	pv, refusal, err := c.confirmReclaim(ctx, pv)
	if err != nil || pv == nil {
		return err
	}
	if refusal != "" {
		c.metrics.refusedDeletes.Inc()
		c.recorder.Eventf(pv, corev1.EventTypeWarning, "VolumeDeleteRefused", "volume %s kept: %s", pv.Spec.CSI.VolumeHandle, refusal)
		klog.InfoS("Volume kept", "pv", pv.Name, "volume", pv.Spec.CSI.VolumeHandle, "reason", refusal)
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	_, err = c.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle})
	cancel()
	if err != nil {
		if status.Code(err) != codes.Aborted {
			c.recorder.Eventf(pv, corev1.EventTypeWarning, "VolumeFailedDelete", "delete volume %s: %s", pv.Spec.CSI.VolumeHandle, status.Convert(err).Message())
		}
		return fmt.Errorf("delete volume of PV %s: %w", pv.Name, err)
	}
	if slices.Contains(pv.Finalizers, FinalizerVolume) {
		updated := pv.DeepCopy()
		updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool { return f == FinalizerVolume })
		if _, err := c.client.CoreV1().PersistentVolumes().Update(ctx, updated, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("remove finalizer from PV %s: %w", pv.Name, err)
		}
	}
	if pv.DeletionTimestamp == nil {
		err := c.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete PV %s: %w", pv.Name, err)
		}
	}
	c.capacityMayHaveChanged()
	klog.InfoS("Deleted volume", "pv", pv.Name, "volume", pv.Spec.CSI.VolumeHandle)
	return nil
}

// volumeDeleted: a PV gone from a watch event (a tombstone is a relist's
// guess) is noted for the orphan check, and the other PVs that named its
// volume are looked at again (a reclaim refused because they shared it).
func (c *Controller) volumeDeleted(obj any) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok || pv.Spec.CSI == nil {
		return
	}
	if c.responsibleFor(pv) {
		c.released.note(pv, c.driverName, time.Now())
	}
	others, err := c.volumes.List(labels.Everything())
	if err != nil {
		return
	}
	for _, other := range others {
		if other.Spec.CSI != nil && other.Spec.CSI.VolumeHandle == pv.Spec.CSI.VolumeHandle && other.UID != pv.UID {
			c.volumeQueue.Add(other.Name)
		}
	}
}
