package webhook

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// podState holds a class of each kind a pod's volume may use, one claim
// of each, and a default class of toposnap's.
func podState(t testing.TB) State {
	defaultClass := storageClass("default-toposnap", DriverName)
	defaultClass.Annotations = map[string]string{annDefaultStorageClass: "true"}
	unclassed := claim("unclassed", "", "1Gi")
	unclassed.Spec.StorageClassName = nil
	return newState(t,
		storageClass("toposnap", DriverName, zoneB),
		storageClass("local", NoProvisioner),
		storageClass("other", otherCSI),
		defaultClass,
		claim("data", "toposnap", "1Gi"),
		claim("local-data", "local", "1Gi"),
		claim("ebs", "other", "1Gi"),
		claim("no-class", "", "1Gi"),
		claim("orphan", "deleted-class", "1Gi"),
		unclassed,
	)
}

// pod is a pod in namespace for the default scheduler, with volumes.
func pod(name string, volumes ...corev1.Volume) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{
			SchedulerName: DefaultSchedulerName,
			Containers:    []corev1.Container{{Name: "app", Image: "busybox"}},
			Volumes:       volumes,
		},
	}
}

// claimVolume is a volume named name mounting the claim claimName.
func claimVolume(name, claimName string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName},
	}}
}

// ephemeralVolume is a generic ephemeral volume named name of class (nil: none named).
func ephemeralVolume(name string, class *string) corev1.Volume {
	spec := claim("", "", "1Gi").Spec
	spec.StorageClassName = class
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{
		VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{Spec: spec},
	}}}
}

func TestMutatePod(t *testing.T) {
	configMap := corev1.Volume{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}}
	emptyDir := corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	unnamedScheduler := pod("web", claimVolume("data", "data"))
	unnamedScheduler.Spec.SchedulerName = ""
	ownScheduler := pod("web", claimVolume("data", "data"))
	ownScheduler.Spec.SchedulerName = "gpu-scheduler"
	onNode := pod("web", claimVolume("data", "data"))
	onNode.Spec.NodeName = "node1"
	generated := pod("", claimVolume("data", "data"))
	generated.GenerateName = "web-"

	tests := []struct {
		name          string
		pod           *corev1.Pod
		update        bool
		schedulerName string // "": testScheduler
		off           bool   // run with the feature off
		wantScheduler string // spec.schedulerName after the patch
		wantWarning   string // substring of the only warning; "": none
	}{
		{name: "claim of a toposnap class moves the pod off default-scheduler with a warning",
			pod: pod("web", configMap, claimVolume("data", "data")), wantScheduler: testScheduler,
			wantWarning: "pod app/web: spec.schedulerName set to toposnap-scheduler (volume data uses StorageClass toposnap of csi.toposnap.io)"},
		{name: "a pod without a scheduler name is moved too",
			pod: unnamedScheduler, wantScheduler: testScheduler, wantWarning: "(volume data uses StorageClass toposnap"},
		{name: "ephemeral volume of a toposnap class moves the pod",
			pod: pod("web", ephemeralVolume("cache", ptr.To("toposnap"))), wantScheduler: testScheduler,
			wantWarning: "(volume cache uses StorageClass toposnap"},
		{name: "ephemeral volume without a class gets the default toposnap class and moves the pod",
			pod: pod("web", ephemeralVolume("cache", nil)), wantScheduler: testScheduler, wantWarning: "StorageClass default-toposnap"},
		{name: "claim without a class is judged by the default class",
			pod: pod("web", claimVolume("data", "unclassed")), wantScheduler: testScheduler, wantWarning: "StorageClass default-toposnap"},
		{name: "a pod created with generateName is named by its prefix",
			pod: generated, wantScheduler: testScheduler, wantWarning: "pod app/web-*:"},
		{name: "a missing claim does not count, another toposnap claim still moves the pod",
			pod: pod("web", claimVolume("later", "not-created-yet"), claimVolume("data", "data")), wantScheduler: testScheduler,
			wantWarning: "volume data"},
		{name: "static local PVs (no-provisioner) stay with the default scheduler",
			pod: pod("web", claimVolume("data", "local-data")), wantScheduler: DefaultSchedulerName},
		{name: "another driver's claim stays with the default scheduler",
			pod:           pod("web", claimVolume("data", "ebs"), ephemeralVolume("cache", ptr.To("other"))),
			wantScheduler: DefaultSchedulerName},
		{name: "a missing claim is left alone",
			pod: pod("web", claimVolume("data", "not-created-yet")), wantScheduler: DefaultSchedulerName},
		{name: "a claim of a missing class is left alone",
			pod: pod("web", claimVolume("data", "orphan")), wantScheduler: DefaultSchedulerName},
		{name: "a claim with storageClassName \"\" is left alone",
			pod: pod("web", claimVolume("data", "no-class")), wantScheduler: DefaultSchedulerName},
		{name: "a pod without claims is left alone",
			pod: pod("web", configMap, emptyDir), wantScheduler: DefaultSchedulerName},
		{name: "a pod naming its own scheduler is left alone",
			pod: ownScheduler, wantScheduler: "gpu-scheduler"},
		{name: "a pod already on a node is left alone",
			pod: onNode, wantScheduler: DefaultSchedulerName},
		{name: "updates are never mutated",
			pod: pod("web", claimVolume("data", "data")), update: true, wantScheduler: DefaultSchedulerName},
		{name: "without --scheduler-name every pod is left alone",
			pod: pod("web", claimVolume("data", "data")), off: true, wantScheduler: DefaultSchedulerName},
	}
	state := podState(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := PodOptions{SchedulerName: testScheduler}
			if tt.off {
				opts = PodOptions{}
			}
			decision, err := MutatePod(context.Background(), tt.pod, !tt.update, opts, state)
			if err != nil {
				t.Fatal(err)
			}
			if !decision.Allowed {
				t.Fatalf("denied: %s", decision.Message())
			}
			if got := patchedScheduler(t, tt.pod, decision.Patch); got != tt.wantScheduler {
				t.Errorf("spec.schedulerName after patch = %q, want %q", got, tt.wantScheduler)
			}
			switch {
			case tt.wantWarning == "" && len(decision.Warnings) > 0:
				t.Errorf("warnings %q, want none", decision.Warnings)
			case tt.wantWarning != "" && (len(decision.Warnings) != 1 || !strings.Contains(decision.Warnings[0], tt.wantWarning)):
				t.Errorf("warnings %q, want one containing %q", decision.Warnings, tt.wantWarning)
			}
		})
	}
}

func TestMutatePodReportsUnreadableState(t *testing.T) {
	_, err := MutatePod(context.Background(), pod("web", claimVolume("data", "data")), true, PodOptions{SchedulerName: testScheduler}, brokenState{})
	if !errors.Is(err, errBroken) {
		t.Fatalf("error %v, want the state's %v", err, errBroken)
	}
}

// patchedScheduler applies patch to pod as the API server would and
// returns the pod's spec.schedulerName afterwards.
func patchedScheduler(t *testing.T, pod *corev1.Pod, patch []PatchOperation) string {
	t.Helper()
	if len(patch) == 0 {
		return pod.Spec.SchedulerName
	}
	return applyPatch(t, pod, patch).Spec.SchedulerName
}

// TestMutatePodMarksPodsForTheExtender: pods using toposnap volumes that go
// to a scheduler managing VolumeResource get one unit of it (so only they
// reach the extender); no other pod does, and nothing else in the pod
// changes.
func TestMutatePodMarksPodsForTheExtender(t *testing.T) {
	withLimits := pod("web", claimVolume("data", "data"))
	withLimits.Spec.Containers[0].Resources = corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m")},
		Claims:   []corev1.ResourceClaim{{Name: "gpu"}},
	}
	already := pod("web", claimVolume("data", "data"))
	already.Spec.Containers = append([]corev1.Container{{Name: "sidecar"}}, already.Spec.Containers...)
	already.Spec.Containers[1].Resources.Limits = corev1.ResourceList{VolumeResource: resource.MustParse("1")}
	ownScheduler := pod("web", claimVolume("data", "data"))
	ownScheduler.Spec.SchedulerName = "gpu-scheduler"
	onNode := pod("web", claimVolume("data", "data"))
	onNode.Spec.NodeName = "node1"
	defaultOnly := PodOptions{VolumeResource: VolumeResource, ResourceSchedulers: []string{DefaultSchedulerName}}
	secondScheduler := PodOptions{SchedulerName: testScheduler, VolumeResource: VolumeResource}

	tests := []struct {
		name          string
		pod           *corev1.Pod
		opts          PodOptions
		wantMarked    bool
		wantScheduler string
	}{
		{"toposnap claim, default scheduler managing the resource", pod("web", claimVolume("data", "data")), defaultOnly, true, DefaultSchedulerName},
		{"toposnap ephemeral volume", pod("web", ephemeralVolume("cache", ptr.To("toposnap"))), defaultOnly, true, DefaultSchedulerName},
		{"claim not created yet may be toposnap's", pod("web", claimVolume("data", "not-created-yet")), defaultOnly, true, DefaultSchedulerName},
		{"static local PV", pod("web", claimVolume("data", "local-data")), defaultOnly, false, DefaultSchedulerName},
		{"another driver's claim", pod("web", claimVolume("data", "ebs")), defaultOnly, false, DefaultSchedulerName},
		{"pod for a scheduler that does not manage the resource", ownScheduler, defaultOnly, false, "gpu-scheduler"},
		{"pod already on a node", onNode, defaultOnly, false, DefaultSchedulerName},
		{"pod already asking for the resource", already, defaultOnly, true, DefaultSchedulerName},
		{"existing resources are kept", withLimits, defaultOnly, true, DefaultSchedulerName},
		{"moved to the second scheduler and marked for it", pod("web", claimVolume("data", "data")), secondScheduler, true, testScheduler},
		{"missing claim stays with a default scheduler that does not manage the resource",
			pod("web", claimVolume("data", "not-created-yet")), secondScheduler, false, DefaultSchedulerName},
		{"resource off", pod("web", claimVolume("data", "data")), PodOptions{ResourceSchedulers: []string{DefaultSchedulerName}}, false, DefaultSchedulerName},
	}
	state := podState(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			decision, err := MutatePod(context.Background(), tt.pod, true, tt.opts, state)
			if err != nil {
				t.Fatal(err)
			}
			patched := tt.pod
			if len(decision.Patch) > 0 {
				patched = applyPatch(t, tt.pod, decision.Patch)
			}
			if patched.Spec.SchedulerName != tt.wantScheduler {
				t.Errorf("spec.schedulerName = %q, want %q", patched.Spec.SchedulerName, tt.wantScheduler)
			}
			units := 0
			for _, c := range patched.Spec.Containers {
				limit, request := c.Resources.Limits[VolumeResource], c.Resources.Requests[VolumeResource]
				units += int(limit.Value())
				if !request.IsZero() && request.Cmp(limit) != 0 {
					t.Errorf("container %s: request %s != limit %s", c.Name, request.String(), limit.String())
				}
			}
			if marked := units > 0; marked != tt.wantMarked || units > 1 {
				t.Fatalf("%s units in the pod, want marked=%v (patch %+v)", strconv.Itoa(units), tt.wantMarked, decision.Patch)
			}
			before, after := tt.pod.Spec.Containers[0].Resources, patched.Spec.Containers[0].Resources
			for name, q := range before.Limits {
				if got := after.Limits[name]; got.Cmp(q) != 0 {
					t.Errorf("limit %s changed: %s -> %s", name, q.String(), got.String())
				}
			}
			for name, q := range before.Requests {
				if got := after.Requests[name]; got.Cmp(q) != 0 {
					t.Errorf("request %s changed: %s -> %s", name, q.String(), got.String())
				}
			}
			if len(after.Claims) != len(before.Claims) {
				t.Errorf("resource claims changed: %v -> %v", before.Claims, after.Claims)
			}
		})
	}
}
