package webhooke2e

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/webhook"
)

// TestPodsUsingToposnapClassesGoToTheSecondScheduler: through the real API
// server, a pod whose claim uses a toposnap class comes back with
// schedulerName toposnap-scheduler and a warning; a pod whose claim uses
// another provisioner's class, or that names its own scheduler, is left as
// it is.
func TestPodsUsingToposnapClassesGoToTheSecondScheduler(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, time.Minute)
	ns := createNamespace(t, nil)
	createStorageClass(t, withWaitForFirstConsumer(storageClass("e2e-pod-ours", webhook.DriverName)))
	createStorageClass(t, withWaitForFirstConsumer(storageClass("e2e-pod-theirs", "example.com/other")))
	for _, claim := range []*corev1.PersistentVolumeClaim{newClaim(ns, "ours", "e2e-pod-ours", "1Gi"), newClaim(ns, "theirs", "e2e-pod-theirs", "1Gi")} {
		if _, err := env.cluster.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(name, claim, scheduler string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
			SchedulerName: scheduler,
			Containers:    []corev1.Container{{Name: "app", Image: "app"}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}}}
	}
	c := newClients(t)
	tests := []struct {
		name, claim, scheduler, want string
	}{
		{"toposnap class", "ours", "", schedulerName},
		{"another provisioner's class", "theirs", "", corev1.DefaultSchedulerName},
		{"a scheduler of its own", "ours", "my-scheduler", "my-scheduler"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *corev1.Pod
			// The webhook's cache sees the claims shortly after they are created.
			err := poll(ctx, 200*time.Millisecond, cacheGrace, func() (bool, error) {
				created, err := c.kube.CoreV1().Pods(ns).Create(ctx, pod("app", tt.claim, tt.scheduler), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				if err != nil {
					return false, err
				}
				got = created
				return created.Spec.SchedulerName == tt.want, nil
			})
			if err != nil {
				t.Fatalf("schedulerName %q, want %q: %v", got.Spec.SchedulerName, tt.want, err)
			}
			warned := strings.Join(c.warnings.take(), "; ")
			if (tt.want == schedulerName) != strings.Contains(warned, schedulerName) {
				t.Fatalf("warnings %q: a moved pod (and only a moved pod) is told why", warned)
			}
			// Only a pod bound for the scheduler that manages the volume
			// resource gets it: another scheduler would look for it on nodes.
			limit := got.Spec.Containers[0].Resources.Limits[webhook.VolumeResource]
			request := got.Spec.Containers[0].Resources.Requests[webhook.VolumeResource]
			if marked := limit.Value() == 1 && request.Value() == 1; marked != (tt.want == schedulerName) {
				t.Fatalf("pod for %s has %s limit %s, request %s", tt.want, webhook.VolumeResource, limit.String(), request.String())
			}
		})
	}
}
