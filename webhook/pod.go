package webhook

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// DefaultSchedulerName is the scheduler a pod gets when it names none; the
// pod route only moves pods that would otherwise go to it.
const DefaultSchedulerName = corev1.DefaultSchedulerName

// VolumeResource is the extended resource the pod route gives pods that use
// toposnap volumes. A scheduler that lists it under its extender's
// managedResources with ignoredByScheduler: true asks the extender about
// those pods only, and does not look for it on nodes (a kubelet admits a
// pod asking for an extended resource its node does not have).
const VolumeResource corev1.ResourceName = "toposnap.io/volumes"

// PodOptions say what the pod route does; the zero value does nothing.
type PodOptions struct {
	// SchedulerName: pods left to the default scheduler that use toposnap
	// volumes are moved to it (a second scheduler configured with the
	// extender); "" leaves spec.schedulerName alone.
	SchedulerName string
	// VolumeResource: the extended resource added to pods that use toposnap
	// volumes, so that only they reach the extender; "" adds none.
	VolumeResource corev1.ResourceName
	// ResourceSchedulers are the schedulers configured with VolumeResource
	// under managedResources (ignoredByScheduler: true); SchedulerName is
	// one too. A pod bound for any other scheduler is never given the
	// resource: that scheduler would look for it on nodes and find none.
	ResourceSchedulers []string
}

// enabled says whether the route changes anything.
func (o PodOptions) enabled() bool { return o.SchedulerName != "" || o.VolumeResource != "" }

// Schedulers are the scheduler names whose pods the route looks at.
func (o PodOptions) Schedulers() []string {
	names := []string{DefaultSchedulerName}
	if o.SchedulerName != "" && !slices.Contains(names, o.SchedulerName) {
		names = append(names, o.SchedulerName)
	}
	if o.VolumeResource != "" {
		for _, name := range o.ResourceSchedulers {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	return names
}

// marks says whether pods bound for scheduler get the resource.
func (o PodOptions) marks(scheduler string) bool {
	return o.VolumeResource != "" && (scheduler == o.SchedulerName || slices.Contains(o.ResourceSchedulers, scheduler))
}

// MutatePod decides on a Pod CREATE. A pod not yet on a node that mounts a
// claim of a toposnap StorageClass, or declares an ephemeral volume of one:
//   - left to the default scheduler, is moved to opts.SchedulerName (when
//     set), with a warning saying so;
//   - bound (then) for a scheduler of opts.ResourceSchedulers or
//     opts.SchedulerName, gets opts.VolumeResource (when set) on its first
//     container, so that scheduler asks toposnap's extender about it. A
//     claim that does not exist yet may turn out to be toposnap's: it earns
//     the resource too (an extender call too many costs a round trip; one
//     too few places a volume without its capacity and snapshot checks),
//     but does not move the pod.
//
// Only classes of DriverName count: static local PVs (no-provisioner) may
// belong to anyone, and the default scheduler already places them. Pods
// whose claims are of other classes are admitted untouched. An error means
// the state could not be read; the caller admits the pod anyway (see
// decidePod).
func MutatePod(ctx context.Context, pod *corev1.Pod, create bool, opts PodOptions, state State) (Decision, error) {
	if !create || pod == nil || !opts.enabled() || pod.Spec.NodeName != "" {
		return allow(), nil
	}
	uses, err := toposnapVolume(ctx, pod, state)
	if err != nil {
		return allow(), err
	}
	if uses.class == nil && !uses.pending {
		return allow(), nil
	}
	decision := allow()
	scheduler := pod.Spec.SchedulerName
	if scheduler == "" {
		scheduler = DefaultSchedulerName
	}
	if uses.class != nil && opts.SchedulerName != "" && scheduler == DefaultSchedulerName {
		decision = routeToScheduler(pod, opts.SchedulerName, uses.volume, uses.class)
		scheduler = opts.SchedulerName
	}
	if opts.marks(scheduler) && !requestsResource(pod, opts.VolumeResource) && len(pod.Spec.Containers) > 0 {
		decision.Patch = append(decision.Patch, markPod(pod, opts.VolumeResource))
	}
	return decision, nil
}

// volumeUse is what a pod's volumes say about toposnap: the first volume of
// a toposnap class (volume and class), and whether a claim it mounts does
// not exist yet (pending).
type volumeUse struct {
	volume  corev1.Volume
	class   *storagev1.StorageClass
	pending bool
}

func toposnapVolume(ctx context.Context, pod *corev1.Pod, state State) (volumeUse, error) {
	var use volumeUse
	for _, volume := range pod.Spec.Volumes {
		claim, err := volumeClaim(ctx, pod, volume, state)
		if err != nil {
			return use, err
		}
		if claim == nil {
			use.pending = use.pending || (volume.PersistentVolumeClaim != nil && volume.PersistentVolumeClaim.ClaimName != "")
			continue
		}
		class, err := claimClass(ctx, claim, state)
		if err != nil {
			return use, err
		}
		if class != nil && class.Provisioner == DriverName {
			use.volume, use.class = volume, class
			return use, nil
		}
	}
	return use, nil
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

// requestsResource says whether any container already asks for name.
func requestsResource(pod *corev1.Pod, name corev1.ResourceName) bool {
	for _, containers := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range containers {
			if _, ok := c.Resources.Limits[name]; ok {
				return true
			}
			if _, ok := c.Resources.Requests[name]; ok {
				return true
			}
		}
	}
	return false
}

// markPod gives the pod's first container one unit of name, as a limit and
// a request (an extended resource cannot be overcommitted: the API server
// wants both, equal). The whole resources member is written back, so the
// patch holds whether or not the pod's JSON has its limits and requests.
func markPod(pod *corev1.Pod, name corev1.ResourceName) PatchOperation {
	resources := *pod.Spec.Containers[0].Resources.DeepCopy()
	one := resource.MustParse("1")
	if resources.Limits == nil {
		resources.Limits = corev1.ResourceList{}
	}
	if resources.Requests == nil {
		resources.Requests = corev1.ResourceList{}
	}
	resources.Limits[name], resources.Requests[name] = one, one
	return PatchOperation{Op: "add", Path: "/spec/containers/0/resources", Value: resources}
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
