package e2e

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/provisioner"
)

// TestStaticLocalPV: a no-provisioner class with delayed binding and a local
// PV on node1; the claim stays Pending until its pod is scheduled, then
// binds, and the pod lands on node1, where the PV is.
func TestStaticLocalPV(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 3*time.Minute)
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-local"},
		Provisioner: "kubernetes.io/no-provisioner", VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "local-pv-" + ns},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "e2e-local",
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt/disks/ssd1"}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.HostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{"node1"}}},
			}}}},
		},
	}
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Cluster.Client.CoreV1().PersistentVolumes().Delete(ctxFor(t, time.Minute), pv.Name, metav1.DeleteOptions{})
	})
	createClaim(t, ns, "local-claim", "e2e-local", "500Mi", nil)
	if err := poll(ctx, 200*time.Millisecond, 3*time.Second, func() (bool, error) {
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "local-claim", metav1.GetOptions{})
		return err == nil && claim.Status.Phase != corev1.ClaimPending, err
	}); err == nil {
		t.Fatal("local claim bound before any pod used it")
	}
	createPod(t, ns, "local-app", "local-claim")
	bound, node := waitBound(t, ns, "local-claim", "local-app")
	if bound.Name != pv.Name || node != "node1" {
		t.Fatalf("claim bound to %s with pod on %s; want %s on node1", bound.Name, node, pv.Name)
	}
}

// TestRestoreOnWrongNodeIsRescheduled: a node-scope restore whose claim
// names a node that cannot reach the snapshot makes that node's provisioner
// drop selected-node, with an event saying why.
func TestRestoreOnWrongNodeIsRescheduled(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 5*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "src", "e2e-node", "64Mi", nil)
	createPod(t, ns, "src-app", "src")
	_, node := waitBound(t, ns, "src", "src-app")
	other := map[string]string{"node1": "node2", "node2": "node1"}[node]
	snapshotOf(t, ns, "src-snap", "src")

	apiGroup := "snapshot.storage.k8s.io"
	createClaim(t, ns, "misplaced", "e2e-node", "64Mi", &corev1.TypedLocalObjectReference{APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: "src-snap"})
	// Play a scheduler that picked the wrong node.
	patch := `{"metadata":{"annotations":{"` + provisioner.AnnSelectedNode + `":"` + other + `"}}}`
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, "misplaced", "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "misplaced", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, selected := claim.Annotations[provisioner.AnnSelectedNode]
		return !selected, nil
	}); err != nil {
		t.Fatalf("selected-node %s was never dropped: %v", other, err)
	}
	waitEvent(t, ns, "misplaced", "ProvisioningFailed", "another node")
}
