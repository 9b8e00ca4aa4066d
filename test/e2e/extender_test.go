package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	if _, err := env.Cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
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
	events, err := env.Cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Reason == "ProvisioningFailed" && strings.Contains(e.Message, "another node") {
			t.Fatalf("a restore was sent to the wrong node first: %s: %s", e.InvolvedObject.Name, e.Message)
		}
	}
}

// TestCapacityBurst: a burst of pods whose claims together overfill the
// node pools: every pod that fits somewhere is scheduled and bound, the
// rest wait with a reason naming the pool's free space, and no pool ever
// holds more than its capacity.
func TestCapacityBurst(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 6*time.Minute)
	createClass(t, "e2e-node", "node")
	const size = 1 << 30
	fits := 0
	for _, node := range []string{"node1", "node2"} {
		fits += int(poolFree(t, node) / size)
	}
	const extra = 3
	total := fits + extra
	for i := range total {
		createClaim(t, ns, fmt.Sprintf("big-%d", i), "e2e-node", "1Gi", nil)
		createPod(t, ns, fmt.Sprintf("big-pod-%d", i), fmt.Sprintf("big-%d", i))
	}
	bound := func() (int, error) {
		claims, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return 0, err
		}
		n := 0
		for _, c := range claims.Items {
			if c.Status.Phase == corev1.ClaimBound {
				n++
			}
		}
		return n, nil
	}
	if err := poll(ctx, 500*time.Millisecond, 5*time.Minute, func() (bool, error) {
		n, err := bound()
		return n == fits, err
	}); err != nil {
		n, _ := bound()
		t.Fatalf("%d of the %d claims that fit were bound: %v", n, fits, err)
	}
	for _, node := range []string{"node1", "node2"} {
		if free := poolFree(t, node); free < 0 || free >= size {
			t.Errorf("node %s pool has %d bytes free after the burst; want 0 <= free < 1Gi", node, free)
		}
	}
	// The pods whose claims fit nowhere wait, and say why.
	claims, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var waiting []string
	for _, c := range claims.Items {
		if c.Status.Phase != corev1.ClaimBound {
			waiting = append(waiting, strings.Replace(c.Name, "big-", "big-pod-", 1))
		}
	}
	if len(waiting) != extra {
		t.Fatalf("%d claims wait, want %d", len(waiting), extra)
	}
	for _, pod := range waiting {
		waitEvent(t, ns, pod, "FailedScheduling", "free")
	}
	if n, _ := bound(); n != fits {
		t.Fatalf("%d claims bound at the end, want %d", n, fits)
	}
	// Stop the scheduler retrying the ones that cannot fit.
	for _, pod := range waiting {
		_ = env.Cluster.Client.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{})
	}
}

// TestPendingPodIsToldWhyItsVolumesFitNowhere is the seed's mistake: a class
// allowing only zone cn-hangzhou-d while every node is in cn-hangzhou-b. The
// scheduler's own VolumeBinding filter rejects every node before the
// extender is asked, so the extender's explainer posts the per-node reason
// on the pod as a FailedScheduling event of its own.
func TestPendingPodIsToldWhyItsVolumesFitNowhere(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	createClass(t, "e2e-zone-d", "zone", "cn-hangzhou-d")
	createClaim(t, ns, "stranded", "e2e-zone-d", "64Mi", nil)
	createPod(t, ns, "stranded", "stranded")
	want := "pvc " + ns + "/stranded: class e2e-zone-d allows zone cn-hangzhou-d; node is in zone cn-hangzhou-b"
	var seen []string
	err := poll(ctx, 250*time.Millisecond, 2*time.Minute, func() (bool, error) {
		events, err := env.Cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=stranded,reason=FailedScheduling"})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range events.Items {
			seen = append(seen, e.Source.Component+": "+e.Message)
			if e.Source.Component == "toposnap-extender" && strings.Contains(e.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no FailedScheduling event from toposnap-extender saying %q; events: %q", want, seen)
	}

	// The fix: allowedTopologies is immutable, so the class is recreated
	// allowing zone b; the pod then lands and its volume is in zone b.
	if err := env.Cluster.Client.StorageV1().StorageClasses().Delete(ctx, "e2e-zone-d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := env.Cluster.Client.StorageV1().StorageClasses().Get(ctx, "e2e-zone-d", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatal(err)
	}
	createClass(t, "e2e-zone-d", "zone", "cn-hangzhou-b")
	pv, _ := waitBound(t, ns, "stranded", "stranded")
	if zone := affinityValue(pv, topology.ZoneKey); zone != "cn-hangzhou-b" {
		t.Fatalf("PV %s is in zone %q, want cn-hangzhou-b", pv.Name, zone)
	}
}
