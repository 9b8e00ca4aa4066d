package provisioner

import (
	"context"
	"fmt"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
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
