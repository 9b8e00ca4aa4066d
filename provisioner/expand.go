package provisioner

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// resizeNeeded compares a bound claim's request with its PV's capacity:
// +1 grow, -1 a shrink (refused), 0 nothing to do.
func resizeNeeded(claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) int {
	requested := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	current := pv.Spec.Capacity[corev1.ResourceStorage]
	return requested.Cmp(current)
}

// expand plays the resizer for a bound claim whose request outgrew its PV:
// ControllerExpandVolume, then the PV's capacity, then the claim's status.
// Directories need no node-side step, so the claim is done at once.
func (c *Controller) expand(ctx context.Context, claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) error {
	requested := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	switch resizeNeeded(claim, pv) {
	case 0:
		return c.syncClaimCapacity(ctx, claim, pv)
	case -1:
		current := pv.Spec.Capacity[corev1.ResourceStorage]
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "VolumeResizeFailed",
			"volumes cannot shrink: requested %s is below the volume's %s", requested.String(), current.String())
		return nil
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "Resizing", "External resizer is resizing volume %s to %s", pv.Name, requested.String())
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	resp, err := c.csi.ControllerExpandVolume(callCtx, &csi.ControllerExpandVolumeRequest{
		VolumeId: pv.Spec.CSI.VolumeHandle, CapacityRange: &csi.CapacityRange{RequiredBytes: requested.Value()},
	})
	cancel()
	if err != nil {
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "VolumeResizeFailed", "resize volume %s: %s", pv.Name, status.Convert(err).Message())
		return fmt.Errorf("expand %s: %w", pv.Name, err)
	}
	updated := pv.DeepCopy()
	updated.Spec.Capacity[corev1.ResourceStorage] = *resource.NewQuantity(resp.GetCapacityBytes(), resource.BinarySI)
	pv, err = c.client.CoreV1().PersistentVolumes().Update(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("record new capacity on PV %s: %w", updated.Name, err)
	}
	if err := c.syncClaimCapacity(ctx, claim, pv); err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "VolumeResizeSuccessful", "Resized volume %s to %s", pv.Name, requested.String())
	c.capacityMayHaveChanged()
	klog.InfoS("Expanded", "pvc", klog.KObj(claim), "pv", pv.Name, "bytes", resp.GetCapacityBytes())
	return nil
}

// syncClaimCapacity makes the claim's status report its PV's capacity.
func (c *Controller) syncClaimCapacity(ctx context.Context, claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) error {
	capacity := pv.Spec.Capacity[corev1.ResourceStorage]
	current, ok := claim.Status.Capacity[corev1.ResourceStorage]
	if !ok || current.Cmp(capacity) == 0 {
		return nil // the PV controller fills it at binding; only a resize changes it
	}
	updated := claim.DeepCopy()
	updated.Status.Capacity[corev1.ResourceStorage] = capacity
	if _, err := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("record new capacity on claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	return nil
}
