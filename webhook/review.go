package webhook

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	kjson "sigs.k8s.io/json"
)

// Resources each route is registered for.
var (
	storageClassesResource  = metav1.GroupVersionResource{Group: storagev1.GroupName, Version: "v1", Resource: "storageclasses"}
	claimsResource          = metav1.GroupVersionResource{Group: corev1.GroupName, Version: "v1", Resource: "persistentvolumeclaims"}
	snapshotClassesResource = metav1.GroupVersionResource{Group: snapv1.GroupName, Version: "v1", Resource: "volumesnapshotclasses"}
	podsResource            = metav1.GroupVersionResource{Group: corev1.GroupName, Version: "v1", Resource: "pods"}
)

// badRequest is an error in the request itself, answered with HTTP 400.
type badRequest struct{ message string }

func (e *badRequest) Error() string { return e.message }

func badRequestf(format string, args ...any) error {
	return &badRequest{message: fmt.Sprintf(format, args...)}
}

// decider turns one admission request into a decision. It returns a
// *badRequest when the request cannot be understood, and another error
// when the state it needs cannot be read.
type decider func(ctx context.Context, request *admissionv1.AdmissionRequest) (Decision, error)

// decodeReview parses an AdmissionReview v1 that carries a request, as the
// API server sends it (field names are case-sensitive).
func decodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequestf("empty body: expected a JSON admission.k8s.io/v1 AdmissionReview")
	}
	var review admissionv1.AdmissionReview
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &review); err != nil {
		return nil, badRequestf("decode AdmissionReview: %v", err)
	}
	if gvk := review.GroupVersionKind(); gvk != admissionv1.SchemeGroupVersion.WithKind("AdmissionReview") {
		return nil, badRequestf("expected apiVersion %s and kind AdmissionReview, got apiVersion %q and kind %q",
			admissionv1.SchemeGroupVersion, review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, badRequestf("AdmissionReview has no request")
	}
	if review.Request.UID == "" {
		return nil, badRequestf("AdmissionReview request has no uid")
	}
	return &review, nil
}

// decodeObject parses an object of the request (field is "object" or
// "oldObject") into into, a pointer to the route's type.
func decodeObject(raw runtime.RawExtension, field, kind string, into any) error {
	if len(raw.Raw) == 0 {
		return badRequestf("request.%s is missing: expected a %s", field, kind)
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(raw.Raw, into); err != nil {
		return badRequestf("decode request.%s as %s: %v", field, kind, err)
	}
	return nil
}

// misrouted admits a request for a resource the route does not handle:
// the webhook configuration is wrong, and blocking every such object would
// do more harm than letting it through with a warning.
func misrouted(request *admissionv1.AdmissionRequest, want metav1.GroupVersionResource) (Decision, bool) {
	if request.Resource == want && request.SubResource == "" {
		return Decision{}, false
	}
	klog.ErrorS(nil, "Admission request for a resource this route does not handle; check the webhook configuration",
		"want", want.String(), "got", request.Resource.String(), "subResource", request.SubResource)
	return allow(fmt.Sprintf("toposnap webhook: this route handles %s, not %s/%s; check the webhook configuration's rules",
		want.String(), request.Resource.String(), request.SubResource)), true
}

// decideStorageClass is the decider of the StorageClass mutating route.
func decideStorageClass(state State) decider {
	return func(_ context.Context, request *admissionv1.AdmissionRequest) (Decision, error) {
		if decision, ok := misrouted(request, storageClassesResource); ok {
			return decision, nil
		}
		if request.Operation != admissionv1.Create {
			return allow(), nil
		}
		var class storagev1.StorageClass
		if err := decodeObject(request.Object, "object", "StorageClass", &class); err != nil {
			return Decision{}, err
		}
		if !topologyAware(&class) {
			return allow(), nil
		}
		nodes, err := state.Nodes()
		if err != nil {
			return Decision{}, err
		}
		return MutateStorageClass(&class, true, nodes), nil
	}
}

// decideClaim is the decider of the PersistentVolumeClaim validating route.
func decideClaim(state State) decider {
	return func(ctx context.Context, request *admissionv1.AdmissionRequest) (Decision, error) {
		if decision, ok := misrouted(request, claimsResource); ok {
			return decision, nil
		}
		if request.Operation != admissionv1.Create {
			return allow(), nil
		}
		var claim corev1.PersistentVolumeClaim
		if err := decodeObject(request.Object, "object", "PersistentVolumeClaim", &claim); err != nil {
			return Decision{}, err
		}
		if claim.Namespace == "" {
			// The API server fills the namespace in before admission;
			// the request carries it too.
			claim.Namespace = request.Namespace
		}
		return ValidateClaim(ctx, &claim, true, state)
	}
}

// decideSnapshotClass is the decider of the VolumeSnapshotClass validating route.
func decideSnapshotClass(state State) decider {
	return func(_ context.Context, request *admissionv1.AdmissionRequest) (Decision, error) {
		if decision, ok := misrouted(request, snapshotClassesResource); ok {
			return decision, nil
		}
		if request.Operation != admissionv1.Create && request.Operation != admissionv1.Update {
			return allow(), nil
		}
		var class snapv1.VolumeSnapshotClass
		if err := decodeObject(request.Object, "object", "VolumeSnapshotClass", &class); err != nil {
			return Decision{}, err
		}
		var old *snapv1.VolumeSnapshotClass
		if request.Operation == admissionv1.Update {
			old = &snapv1.VolumeSnapshotClass{}
			if err := decodeObject(request.OldObject, "oldObject", "VolumeSnapshotClass", old); err != nil {
				return Decision{}, err
			}
		}
		if !isDefaultSnapshotClass(&class) {
			return allow(), nil
		}
		classes, err := state.VolumeSnapshotClasses()
		if err != nil {
			return Decision{}, err
		}
		return ValidateSnapshotClass(&class, old, classes), nil
	}
}

// decidePod is the decider of the Pod mutating route (opts' zero value
// turns it off). Moving a pod to another scheduler and marking it for the
// extender are conveniences, not checks: when the state cannot be read the
// pod is admitted as it is, with a warning, never refused.
func decidePod(state State, opts PodOptions) decider {
	return func(ctx context.Context, request *admissionv1.AdmissionRequest) (Decision, error) {
		if decision, ok := misrouted(request, podsResource); ok {
			return decision, nil
		}
		if request.Operation != admissionv1.Create || !opts.enabled() {
			return allow(), nil
		}
		var pod corev1.Pod
		if err := decodeObject(request.Object, "object", "Pod", &pod); err != nil {
			return Decision{}, err
		}
		if pod.Namespace == "" {
			pod.Namespace = request.Namespace
		}
		decision, err := MutatePod(ctx, &pod, true, opts, state)
		if err != nil {
			klog.ErrorS(err, "Cannot look up the pod's volumes; admitting it unchanged", "pod", klog.KRef(pod.Namespace, pod.Name), "uid", request.UID)
			return allow(unchangedWarning(&pod, opts, err)), nil
		}
		return decision, nil
	}
}

// unchangedWarning tells the user of a pod admitted unchanged what the
// route could not do for it, and how to do it by hand.
func unchangedWarning(pod *corev1.Pod, opts PodOptions, err error) string {
	var todo []string
	if opts.SchedulerName != "" {
		todo = append(todo, "set spec.schedulerName to "+opts.SchedulerName)
	}
	if opts.VolumeResource != "" {
		todo = append(todo, fmt.Sprintf("add %s: 1 to a container's limits", opts.VolumeResource))
	}
	return fmt.Sprintf("pod %s admitted unchanged: the toposnap webhook could not read its volumes (%v); if they are toposnap's, %s",
		podName(pod), err, strings.Join(todo, " and "))
}
