package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/snapshotter"
	"github.com/toposnap/toposnap/test/harness"
)

func createNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-"}}
	created, err := env.Cluster.Client.CoreV1().Namespaces().Create(ctxFor(t, time.Minute), ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created.Name
}

func createClass(t *testing.T, name, scope string, allowedZones ...string) {
	t.Helper()
	class := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: name},
		Provisioner:          "csi.toposnap.io",
		Parameters:           map[string]string{"scope": scope},
		VolumeBindingMode:    ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		AllowVolumeExpansion: ptr.To(true),
	}
	if len(allowedZones) > 0 {
		class.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: topology.ZoneKey, Values: allowedZones}}}}
	}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctxFor(t, time.Minute), class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func createClaim(t *testing.T, ns, name, class, size string, dataSource *corev1.TypedLocalObjectReference) {
	t.Helper()
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			DataSource:       dataSource,
		},
	}
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctxFor(t, time.Minute), claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createPod(t *testing.T, ns, name, claim string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10",
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	if _, err := env.Cluster.Client.CoreV1().Pods(ns).Create(ctxFor(t, time.Minute), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitBound waits for the claim to bind and for its pod to be scheduled, and
// returns the PV and the pod's node.
func waitBound(t *testing.T, ns, claimName, podName string) (*corev1.PersistentVolume, string) {
	t.Helper()
	pv, node, err := harness.WaitBound(ctxFor(t, 3*time.Minute), env.Cluster.Client, ns, claimName, podName, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return pv, node
}

func affinityValue(pv *corev1.PersistentVolume, key string) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if expr.Key == key && len(expr.Values) == 1 {
				return expr.Values[0]
			}
		}
	}
	return ""
}

// TestDynamicNodeScope: the claim stays Pending until a pod uses it; the
// scheduler picks a node; the PV is created there with affinity to it.
func TestDynamicNodeScope(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "data", "e2e-node", "64Mi", nil)
	ctx := ctxFor(t, time.Minute)
	// Without a consumer nothing is provisioned: the claim waits.
	if err := poll(ctx, 200*time.Millisecond, 3*time.Second, func() (bool, error) {
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
		return err == nil && claim.Status.Phase != corev1.ClaimPending, err
	}); err == nil {
		t.Fatal("claim left Pending without a pod using it")
	}
	createPod(t, ns, "app", "data")
	pv, node := waitBound(t, ns, "data", "app")
	if node != "node1" && node != "node2" {
		t.Fatalf("pod scheduled on %q, want a worker", node)
	}
	if got := affinityValue(pv, topology.NodeKey); got != node {
		t.Fatalf("PV %s affinity node = %q, pod on %q", pv.Name, got, node)
	}
}

// TestDynamicZoneScope: a zone-scope volume's PV follows the zone, and data
// written through node1 is read through node2.
func TestDynamicZoneScope(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	createClass(t, "e2e-zone", "zone", "cn-hangzhou-b")
	createClaim(t, ns, "shared", "e2e-zone", "64Mi", nil)
	createPod(t, ns, "app", "shared")
	pv, _ := waitBound(t, ns, "shared", "app")
	if got := affinityValue(pv, topology.ZoneKey); got != "cn-hangzhou-b" {
		t.Fatalf("PV affinity zone = %q, want cn-hangzhou-b", got)
	}
	written := writeThrough(t, "node1", pv.Spec.CSI.VolumeHandle, "hello from node1")
	if read := readThrough(t, "node2", pv.Spec.CSI.VolumeHandle); read != written {
		t.Fatalf("node2 reads %s, node1 wrote %s", read, written)
	}
}

// TestSnapshotRestore: a VolumeSnapshot becomes ready with its content
// holding the handle and topology; a restore has identical data; deleting
// the snapshot removes content and backend snapshot.
func TestSnapshotRestore(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 5*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "disk-pvc", "e2e-node", "64Mi", nil)
	createPod(t, ns, "writer", "disk-pvc")
	pv, node := waitBound(t, ns, "disk-pvc", "writer")
	written := writeThrough(t, node, pv.Spec.CSI.VolumeHandle, "the seed's data")

	contentName := snapshotOf(t, ns, "disk-snapshot", "disk-pvc")
	content, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	handle := ptr.Deref(content.Status.SnapshotHandle, "")
	if handle == "" || content.Annotations[topology.AnnAccessibleTopology] == "" {
		t.Fatalf("content %s lacks handle or topology: %+v", contentName, content)
	}

	apiGroup := "snapshot.storage.k8s.io"
	createClaim(t, ns, "restored", "e2e-node", "64Mi", &corev1.TypedLocalObjectReference{APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: "disk-snapshot"})
	createPod(t, ns, "reader", "restored")
	restoredPV, restoredNode := waitBound(t, ns, "restored", "reader")
	if restoredNode != node {
		t.Fatalf("restore of a node-scope snapshot on %s ran on %s", node, restoredNode)
	}
	if read := readThrough(t, restoredNode, restoredPV.Spec.CSI.VolumeHandle); read != written {
		t.Fatalf("restored data %s, original %s", read, written)
	}

	if err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "disk-snapshot", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		_, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("content %s survived its VolumeSnapshot: %v", contentName, err)
	}
	listed, err := env.Nodes[node].Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: handle})
	if err != nil {
		t.Fatal(err)
	}
	if len(listed.GetEntries()) != 0 {
		t.Fatalf("backend snapshot %s survived: %v", handle, listed.GetEntries())
	}
	// The node that cut the snapshot counted it, and how long it took.
	for series, atLeast := range map[string]float64{
		`toposnap_snapshotter_create_snapshot_total{code="OK"}`: 1,
		`toposnap_snapshotter_time_to_ready_seconds_count`:      1,
	} {
		got, err := env.Nodes[node].Metric(ctx, "snapshotter", series)
		if err != nil {
			t.Fatal(err)
		}
		if got < atLeast {
			t.Errorf("%s on %s = %v, want at least %v", series, node, got, atLeast)
		}
	}
}

// snapshotOf cuts a VolumeSnapshot of claim with the default class, waits
// until it is ready and returns its content's name.
func snapshotOf(t *testing.T, ns, name, claim string) string {
	t.Helper()
	ctx := ctxFor(t, 3*time.Minute)
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-snapclass",
		Annotations: map[string]string{snapshotter.AnnDefaultClass: "true"}},
		Driver: "csi.toposnap.io", DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claim)}}}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, snap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var contentName string
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		got, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || got.Status == nil || !ptr.Deref(got.Status.ReadyToUse, false) {
			return false, nil
		}
		contentName = ptr.Deref(got.Status.BoundVolumeSnapshotContentName, "")
		return true, nil
	}); err != nil {
		t.Fatalf("VolumeSnapshot %s/%s never became ready: %v", ns, name, err)
	}
	return contentName
}

// writeThrough plays the kubelet: stage and publish the volume on node,
// write a file, and return its checksum.
func writeThrough(t *testing.T, node, volumeID, content string) string {
	t.Helper()
	target := publishOn(t, node, volumeID)
	if err := os.WriteFile(filepath.Join(target, "data.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(content))
	return hex.EncodeToString(sum[:])
}

// readThrough publishes the volume on node and returns data.txt's checksum.
func readThrough(t *testing.T, node, volumeID string) string {
	t.Helper()
	target := publishOn(t, node, volumeID)
	data, err := os.ReadFile(filepath.Join(target, "data.txt"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func publishOn(t *testing.T, node, volumeID string) string {
	t.Helper()
	target, cleanup, err := env.Nodes[node].Publish(ctxFor(t, time.Minute), volumeID, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanup(ctxFor(t, time.Minute)) })
	return target
}
