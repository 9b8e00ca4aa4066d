package webhook

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// DefaultSchedulerName is the scheduler a pod gets when it names none; the
// pod route only moves pods that would otherwise go to it.
const DefaultSchedulerName = corev1.DefaultSchedulerName

// MutatePod decides on a Pod CREATE when the webhook runs with a scheduler
// name (schedulerName; "" turns the feature off). A pod left to the
// default scheduler that mounts a claim of a toposnap StorageClass, or
// declares an ephemeral volume of one, is patched to spec.schedulerName
// schedulerName, the second scheduler that consults toposnap's extender,
// with a warning saying so. Only classes of DriverName count: static local
// PVs (no-provisioner) may belong to anyone, and the default scheduler
// already places them. Pods that name another scheduler, are already on a
// node, or whose claims are missing or of other classes are admitted
// untouched. An error means the state could not be read; the caller
// admits the pod anyway (see decidePod).
func MutatePod(ctx context.Context, pod *corev1.Pod, create bool, schedulerName string, state State) (Decision, error) {
	if !create || pod == nil || schedulerName == "" || pod.Spec.NodeName != "" ||
		(pod.Spec.SchedulerName != "" && pod.Spec.SchedulerName != DefaultSchedulerName) {
		return allow(), nil
	}
	for _, volume := range pod.Spec.Volumes {
		claim, err := volumeClaim(ctx, pod, volume, state)
		if err != nil {
			return allow(), err
		}
		if claim == nil {
			continue
		}
		class, err := claimClass(ctx, claim, state)
		if err != nil {
			return allow(), err
		}
		if class == nil || class.Provisioner != DriverName {
			continue
		}
		return routeToScheduler(pod, schedulerName, volume, class), nil
	}
	return allow(), nil
}

// volumeClaim is the claim behind volume: the named claim as it is in the
// cluster, or the one an ephemeral volume's template will create. It is nil
// for other volume types and for a named claim that does not exist (yet).
func volumeClaim(ctx context.Context, pod *corev1.Pod, volume corev1.Volume, state State) (*corev1.PersistentVolumeClaim, error) {
	switch {
	case volume.PersistentVolumeClaim != nil:
		if volume.PersistentVolumeClaim.ClaimName == "" {
			return nil, nil
		}
		return state.Claim(ctx, pod.Namespace, volume.PersistentVolumeClaim.ClaimName)
	case volume.Ephemeral != nil && volume.Ephemeral.VolumeClaimTemplate != nil:
		// The claim is created after the pod, named <pod>-<volume>; its
		// class is the template's (or the default one when it names none).
		return &corev1.PersistentVolumeClaim{Spec: volume.Ephemeral.VolumeClaimTemplate.Spec}, nil
	}
	return nil, nil
}

// routeToScheduler patches the pod's spec.schedulerName to schedulerName,
// warning which volume's class made it so and how to opt out.
func routeToScheduler(pod *corev1.Pod, schedulerName string, volume corev1.Volume, class *storagev1.StorageClass) Decision {
	op := "replace"
	if pod.Spec.SchedulerName == "" {
		op = "add"
	}
	// The API server may cut warnings at 256 characters: what changed and
	// why come first.
	decision := allow(fmt.Sprintf("pod %s: spec.schedulerName set to %s (volume %s uses StorageClass %s of %s); "+
		"name a scheduler in the pod to opt out", podName(pod), schedulerName, volume.Name, class.Name, DriverName))
	decision.Patch = []PatchOperation{{Op: op, Path: "/spec/schedulerName", Value: schedulerName}}
	return decision
}

// podName names the pod for messages: a pod created with generateName has
// no name yet.
func podName(pod *corev1.Pod) string {
	switch {
	case pod.Name != "":
		return pod.Namespace + "/" + pod.Name
	case pod.GenerateName != "":
		return pod.Namespace + "/" + pod.GenerateName + "*"
	}
	return pod.Namespace + "/(unnamed)"
}
