package provisioner

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// Expansion follows the contract of external-resizer with
// RecoverVolumeExpansionFailure (KEP-1790, GA in Kubernetes 1.34), which
// the kubelet and the API server's quota rely on:
//
//   - before ControllerExpandVolume, the claim's
//     status.allocatedResources[storage] holds the size being asked for
//     and status.allocatedResourceStatuses[storage] is
//     ControllerResizeInProgress, with a Resizing condition;
//   - after it, either NodeResizePending with a FileSystemResizePending
//     condition, when the driver says the node must finish (the kubelet
//     then calls NodeExpandVolume and clears both), or, when no node step
//     is needed, status.capacity grows, the status entry goes and the
//     resize conditions with it;
//   - a failure that cannot be in progress leaves a ControllerResizeError
//     condition, and an infeasible one (InvalidArgument, OutOfRange,
//     NotFound) also ControllerResizeInfeasible, after which the user may
//     lower the request to recover.
//
// Every step is one status write that the next sync can read back, so a
// restart resumes where the last one stopped.

// expand plays the resizer for a bound claim of this driver.
func (c *Controller) expand(ctx context.Context, claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) error {
	if !resizeRequested(claim, pv) {
		return nil
	}
	target, ok := resizeTarget(claim, pv)
	if !ok {
		return nil // the node's step is pending: the kubelet finishes it
	}
	claim, err := c.writeClaimStatus(ctx, claim, func(s *corev1.PersistentVolumeClaimStatus) {
		markControllerResizeInProgress(s, target)
	})
	if err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "Resizing", "External resizer is resizing volume %s to %s", pv.Name, target.String())
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	resp, err := c.csi.ControllerExpandVolume(callCtx, &csi.ControllerExpandVolumeRequest{
		VolumeId: pv.Spec.CSI.VolumeHandle, CapacityRange: &csi.CapacityRange{RequiredBytes: target.Value()},
	})
	cancel()
	if err != nil {
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "VolumeResizeFailed", "resize volume %s: %s", pv.Name, status.Convert(err).Message())
		if expansionFailure(err) != failureInProgress {
			if _, markErr := c.writeClaimStatus(ctx, claim, func(s *corev1.PersistentVolumeClaimStatus) {
				markControllerResizeFailed(s, err)
			}); markErr != nil {
				return fmt.Errorf("expand %s: %w (and recording the failure: %w)", pv.Name, err, markErr)
			}
		}
		return fmt.Errorf("expand %s: %w", pv.Name, err)
	}
	size := target
	if bytes := resp.GetCapacityBytes(); bytes > 0 {
		size = *resource.NewQuantity(bytes, resource.BinarySI)
	}
	if current := pv.Spec.Capacity[corev1.ResourceStorage]; current.Cmp(size) != 0 {
		updated := pv.DeepCopy()
		updated.Spec.Capacity[corev1.ResourceStorage] = size
		if _, err := c.client.CoreV1().PersistentVolumes().Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
			// The claim still says ControllerResizeInProgress at size:
			// the retry expands again (idempotent) and records it.
			return fmt.Errorf("record new capacity %s on PV %s: %w", size.String(), pv.Name, err)
		}
	}
	c.capacityMayHaveChanged()
	if resp.GetNodeExpansionRequired() {
		if _, err := c.writeClaimStatus(ctx, claim, markNodeResizePending); err != nil {
			return err
		}
		c.recorder.Event(claim, corev1.EventTypeNormal, "FileSystemResizeRequired", "Require file system resize of volume on node")
		klog.InfoS("Expanded; the node finishes", "pvc", klog.KObj(claim), "pv", pv.Name, "size", size.String())
		return nil
	}
	if _, err := c.writeClaimStatus(ctx, claim, func(s *corev1.PersistentVolumeClaimStatus) {
		markResizeFinished(s, size)
	}); err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "VolumeResizeSuccessful", "Resized volume %s to %s", pv.Name, size.String())
	klog.InfoS("Expanded", "pvc", klog.KObj(claim), "pv", pv.Name, "size", size.String())
	return nil
}

// resizeRequested: the claim asks for more than its status holds, and its
// PV is bound to this very claim (not to an earlier one of the same name).
func resizeRequested(claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) bool {
	if ref := pv.Spec.ClaimRef; ref == nil || ref.Namespace != claim.Namespace || ref.UID != claim.UID {
		return false
	}
	requested := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	current := claim.Status.Capacity[corev1.ResourceStorage]
	return requested.Cmp(current) > 0
}

// resizeTarget is the size ControllerExpandVolume must ask for, from the
// claim's recorded progress; ok is false when nothing is to be done by the
// controller (the node's step is pending). While an earlier expansion may
// still be running, its size is kept; once it failed for good, or the node
// found it infeasible, the user's current request wins.
func resizeTarget(claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) (target resource.Quantity, ok bool) {
	requested := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	pvSize := pv.Spec.Capacity[corev1.ResourceStorage]
	allocated, hasAllocated := claim.Status.AllocatedResources[corev1.ResourceStorage]
	progress := claim.Status.AllocatedResourceStatuses[corev1.ResourceStorage]
	orAllocated := func() resource.Quantity {
		if hasAllocated {
			return allocated
		}
		return requested
	}
	if pvSize.Cmp(requested) < 0 {
		switch progress {
		case corev1.PersistentVolumeClaimNodeResizeInfeasible:
			return orAllocated(), true
		case corev1.PersistentVolumeClaimNodeResizePending, corev1.PersistentVolumeClaimNodeResizeInProgress:
			// Let the node finish the earlier expansion first.
			target := orAllocated()
			return target, pvSize.Cmp(target) < 0
		case corev1.PersistentVolumeClaimControllerResizeInProgress:
			if hasCondition(claim.Status.Conditions, corev1.PersistentVolumeClaimControllerResizeError) {
				return requested, true // the last attempt failed for good: nothing is in flight
			}
			return orAllocated(), true
		default: // none yet, or ControllerResizeInfeasible: the request may have changed
			return requested, true
		}
	}
	// The PV is already as large as asked: an update that changed nothing,
	// a crash between the expansion and its record, or a node step to redo.
	switch progress {
	case corev1.PersistentVolumeClaimNodeResizePending, corev1.PersistentVolumeClaimNodeResizeInProgress:
		return requested, false
	case corev1.PersistentVolumeClaimNodeResizeInfeasible, corev1.PersistentVolumeClaimControllerResizeInProgress,
		corev1.PersistentVolumeClaimControllerResizeInfeasible:
		return orAllocated(), true
	default:
		if hasCondition(claim.Status.Conditions, corev1.PersistentVolumeClaimFileSystemResizePending) {
			return requested, false
		}
		return orAllocated(), true
	}
}

// failure classes of a failed ControllerExpandVolume, as external-resizer
// tells them apart.
type failure int

const (
	// failureInProgress: the driver may still be working on it (timeouts,
	// Unavailable, ResourceExhausted, Aborted): nothing is recorded.
	failureInProgress failure = iota
	// failureFinal: the call failed and is not running.
	failureFinal
	// failureInfeasible: it never can succeed at that size.
	failureInfeasible
)

func expansionFailure(err error) failure {
	st, ok := status.FromError(err)
	if !ok {
		return failureInProgress // no answer from the driver: assume nothing
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return failureInProgress
	case codes.InvalidArgument, codes.OutOfRange, codes.NotFound:
		return failureInfeasible
	}
	return failureFinal
}

// writeClaimStatus applies mutate to the claim's status and writes it
// through the status subresource when it changed, with the claim's
// resourceVersion: a stale claim is a conflict, retried from the cache.
func (c *Controller) writeClaimStatus(ctx context.Context, claim *corev1.PersistentVolumeClaim, mutate func(*corev1.PersistentVolumeClaimStatus)) (*corev1.PersistentVolumeClaim, error) {
	updated := claim.DeepCopy()
	mutate(&updated.Status)
	if equality.Semantic.DeepEqual(updated.Status, claim.Status) {
		return claim, nil
	}
	written, err := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return claim, fmt.Errorf("record resize progress on claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	return written, nil
}

// markControllerResizeInProgress records that the controller expands the
// volume to target. Other resize conditions go unless the same size is
// being retried (then they still describe it).
func markControllerResizeInProgress(s *corev1.PersistentVolumeClaimStatus, target resource.Quantity) {
	retrying := false
	if allocated, ok := s.AllocatedResources[corev1.ResourceStorage]; ok && allocated.Cmp(target) == 0 {
		retrying = true
	}
	s.Conditions = mergeResizeConditions(s.Conditions, retrying, resizeCondition(corev1.PersistentVolumeClaimResizing, ""))
	if !retrying {
		setResizeStatus(s, corev1.PersistentVolumeClaimControllerResizeInProgress)
	}
	if s.AllocatedResources == nil {
		s.AllocatedResources = corev1.ResourceList{}
	}
	s.AllocatedResources[corev1.ResourceStorage] = target
}

// markControllerResizeFailed records a failure that is not in progress.
func markControllerResizeFailed(s *corev1.PersistentVolumeClaimStatus, err error) {
	if expansionFailure(err) == failureInfeasible {
		setResizeStatus(s, corev1.PersistentVolumeClaimControllerResizeInfeasible)
	}
	s.Conditions = mergeResizeConditions(s.Conditions, true,
		resizeCondition(corev1.PersistentVolumeClaimControllerResizeError, "failed to expand pvc with "+status.Convert(err).Message()))
}

// markNodeResizePending hands the expansion to the kubelet.
func markNodeResizePending(s *corev1.PersistentVolumeClaimStatus) {
	s.Conditions = mergeResizeConditions(s.Conditions, true, resizeCondition(corev1.PersistentVolumeClaimFileSystemResizePending,
		"Waiting for user to (re-)start a pod to finish file system resize of volume on node."))
	setResizeStatus(s, corev1.PersistentVolumeClaimNodeResizePending)
}

// markResizeFinished: the volume has its new size and nothing is left to do.
func markResizeFinished(s *corev1.PersistentVolumeClaimStatus, size resource.Quantity) {
	if s.Capacity == nil {
		s.Capacity = corev1.ResourceList{}
	}
	s.Capacity[corev1.ResourceStorage] = size
	s.Conditions = mergeResizeConditions(s.Conditions, false)
	delete(s.AllocatedResourceStatuses, corev1.ResourceStorage)
	if len(s.AllocatedResourceStatuses) == 0 {
		s.AllocatedResourceStatuses = nil
	}
}

func setResizeStatus(s *corev1.PersistentVolumeClaimStatus, progress corev1.ClaimResourceStatus) {
	if s.AllocatedResourceStatuses == nil {
		s.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{}
	}
	s.AllocatedResourceStatuses[corev1.ResourceStorage] = progress
}

// resizeConditionTypes are the conditions that describe a resize; every
// other condition of the claim is left alone.
var resizeConditionTypes = map[corev1.PersistentVolumeClaimConditionType]bool{
	corev1.PersistentVolumeClaimResizing:                true,
	corev1.PersistentVolumeClaimFileSystemResizePending: true,
	corev1.PersistentVolumeClaimControllerResizeError:   true,
	corev1.PersistentVolumeClaimNodeResizeError:         true,
}

func resizeCondition(conditionType corev1.PersistentVolumeClaimConditionType, message string) corev1.PersistentVolumeClaimCondition {
	return corev1.PersistentVolumeClaimCondition{Type: conditionType, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(), Message: message}
}

// mergeResizeConditions sets the given resize conditions, keeps or drops
// the other resize conditions, and keeps every other condition. A
// condition that is already there with the same status and message keeps
// its transition time, so a retry that changes nothing writes nothing
// (and wakes no watcher).
func mergeResizeConditions(conditions []corev1.PersistentVolumeClaimCondition, keepOtherResizeConditions bool, set ...corev1.PersistentVolumeClaimCondition) []corev1.PersistentVolumeClaimCondition {
	wanted := map[corev1.PersistentVolumeClaimConditionType]corev1.PersistentVolumeClaimCondition{}
	for _, condition := range set {
		wanted[condition.Type] = condition
	}
	var merged []corev1.PersistentVolumeClaimCondition
	for _, condition := range conditions {
		replacement, isWanted := wanted[condition.Type]
		switch {
		case isWanted:
			if condition.Status == replacement.Status && condition.Message == replacement.Message {
				replacement = condition
			}
			merged = append(merged, replacement)
			delete(wanted, condition.Type)
		case !resizeConditionTypes[condition.Type] || keepOtherResizeConditions:
			merged = append(merged, condition)
		}
	}
	for _, condition := range set {
		if _, pending := wanted[condition.Type]; pending {
			merged = append(merged, condition)
		}
	}
	return merged
}

func hasCondition(conditions []corev1.PersistentVolumeClaimCondition, conditionType corev1.PersistentVolumeClaimConditionType) bool {
	for _, condition := range conditions {
		if condition.Type == conditionType && condition.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}
