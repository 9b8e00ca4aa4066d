package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// TestRestoresLandWhereTheSnapshotIs: a node-scope snapshot lives on node2;
// each of 20 restore claims' pods is placed on node2 by the scheduler
// through the extender, first time (no provisioner had to send it back).
// Without the extender the in-tree scheduler picks either node.
func TestRestoresLandWhereTheSnapshotIs(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 5*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "src", "e2e-node", "16Mi", nil)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "src-pod", Namespace: ns}, Spec: corev1.PodSpec{
		NodeSelector: map[string]string{topology.HostnameKey: "node2"},
		Containers:   []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "src"}}}},
	}}
	if _, err := env.cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, node := waitBound(t, ns, "src", "src-pod"); node != "node2" {
		t.Fatalf("source landed on %s, want node2", node)
	}
	snapshotOf(t, ns, "on-node2", "src")

	apiGroup := "snapshot.storage.k8s.io"
	const runs = 20
	for i := range runs {
		createClaim(t, ns, fmt.Sprintf("restore-%d", i), "e2e-node", "16Mi",
			&corev1.TypedLocalObjectReference{APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: "on-node2"})
		createPod(t, ns, fmt.Sprintf("reader-%d", i), fmt.Sprintf("restore-%d", i))
	}
	onNode2 := 0
	for i := range runs {
		if _, node := waitBound(t, ns, fmt.Sprintf("restore-%d", i), fmt.Sprintf("reader-%d", i)); node == "node2" {
			onNode2++
		}
	}
	if onNode2 != runs {
		t.Fatalf("%d of %d restores landed on node2", onNode2, runs)
	}
	events, err := env.cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Reason == "ProvisioningFailed" && strings.Contains(e.Message, "another node") {
			t.Fatalf("a restore was sent to the wrong node first: %s: %s", e.InvolvedObject.Name, e.Message)
		}
	}
}
