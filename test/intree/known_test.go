package intree

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

// Small hand-made states, one per rule, each the smallest reproducer of a
// disagreement class the random states can hit. They fail while the
// extender disagrees with the in-tree plugin.

func knownNode(name, zone string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		topology.HostnameKey: name, topology.NodeKey: name, topology.ZoneKey: zone}}}
}

func knownClass(name, provisioner string, topologies ...corev1.TopologySelectorTerm) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner,
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer), AllowedTopologies: topologies}
}

func knownClaim(name, className, size string, modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, UID: claimUID(name)},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(className), AccessModes: modes,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending}}
}

// knownPV is a local PV of class on node, available.
func knownPV(name, className, size, node string, modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolume {
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
		StorageClassName: className, Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
		AccessModes: modes, PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt"}},
		NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.HostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
	}, Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeAvailable}}
}

// boundPair is a claim bound to a PV on node, as the PV controller leaves them.
func boundPair(claimName, node string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	claim := knownClaim(claimName, "local", "1Gi")
	pv := knownPV("pv-of-"+claimName, "local", "1Gi", node)
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: namespace, Name: claimName, UID: claim.UID}
	pv.Status.Phase = corev1.VolumeBound
	claim.Spec.VolumeName = pv.Name
	claim.Annotations = map[string]string{annBindCompleted: "yes"}
	claim.Status.Phase = corev1.ClaimBound
	return claim, pv
}

func podOf(claims ...string) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: namespace, UID: "uid-app"}}
	for _, c := range claims {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
	}
	return pod
}

func TestKnownDisagreements(t *testing.T) {
	local := knownClass("local", noProvisioner)
	topoNode := knownClass("topo-node", driver)
	twoNodes := []*corev1.Node{knownNode("node-a", "zone-a"), knownNode("node-b", "zone-b")}

	deleting, deletingPV := boundPair("data", "node-a")
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	deleting.Finalizers = []string{"kubernetes.io/pvc-protection"}

	lost, lostPV := boundPair("data", "node-a")
	lost.Status.Phase = corev1.ClaimLost

	preBoundClaim := knownClaim("data", "local", "1Gi")
	preBoundClaim.Spec.VolumeName = "pv-data"
	preBoundClaimPV := knownPV("pv-data", "local", "1Gi", "node-a")

	selected := knownClaim("data", "topo-node", "1Gi")
	selected.Annotations = map[string]string{annSelectedNode: "node-a"}

	selectedLocal := knownClaim("data", "local", "1Gi")
	selectedLocal.Annotations = map[string]string{annSelectedNode: "node-a"}

	reservedElsewhere := knownPV("pv-reserved", "local", "5Gi", "node-b")
	reservedElsewhere.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: namespace, Name: "data"}

	for _, tc := range []struct {
		name    string
		nodes   []*corev1.Node
		objects []any
		pod     *corev1.Pod
	}{{
		name:    "a claim being deleted rejects every node",
		nodes:   twoNodes,
		objects: []any{local, deleting, deletingPV},
		pod:     podOf("data"),
	}, {
		name:    "a claim in phase Lost rejects every node",
		nodes:   twoNodes,
		objects: []any{local, lost, lostPV},
		pod:     podOf("data"),
	}, {
		name:    "a claim with spec.volumeName but no bind-completed annotation is not bound yet",
		nodes:   twoNodes,
		objects: []any{local, preBoundClaim, preBoundClaimPV},
		pod:     podOf("data"),
	}, {
		name:    "a claim's selected-node annotation rules out every other node",
		nodes:   twoNodes,
		objects: []any{topoNode, selected},
		pod:     podOf("data"),
	}, {
		name:    "a claim with selected-node is provisioned there, not matched to a static PV",
		nodes:   twoNodes,
		objects: []any{local, selectedLocal, knownPV("pv-a", "local", "1Gi", "node-a")},
		pod:     podOf("data"),
	}, {
		name:  "an empty allowedTopologies term matches no node",
		nodes: twoNodes,
		objects: []any{knownClass("topo-node", driver, corev1.TopologySelectorTerm{}, corev1.TopologySelectorTerm{
			MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: topology.ZoneKey, Values: []string{"zone-a"}}}}),
			knownClaim("data", "topo-node", "1Gi")},
		pod: podOf("data"),
	}, {
		name:    "a PV pre-bound to the claim on another node keeps the claim off this node's other PVs",
		nodes:   twoNodes,
		objects: []any{local, knownClaim("data", "local", "1Gi"), reservedElsewhere, knownPV("pv-a", "local", "5Gi", "node-a")},
		pod:     podOf("data"),
	}, {
		// In-tree matches unbound claims smallest request first: "small"
		// takes the 10Gi RWO+RWX PV, leaving "large" (RWX) nothing. In pod
		// order "large" would take it and "small" the 20Gi RWO one.
		name:  "unbound claims are matched to static PVs smallest request first",
		nodes: twoNodes,
		objects: []any{local,
			knownClaim("large", "local", "10Gi", corev1.ReadWriteMany), knownClaim("small", "local", "5Gi"),
			knownPV("pv-rwx", "local", "10Gi", "node-a", corev1.ReadWriteOnce, corev1.ReadWriteMany),
			knownPV("pv-rwo", "local", "20Gi", "node-a")},
		pod: podOf("large", "small"),
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := quiet(t.Context())
			c := &cluster{Nodes: tc.nodes, Pod: tc.pod}
			for _, obj := range tc.objects {
				switch o := obj.(type) {
				case *storagev1.StorageClass:
					c.Classes = append(c.Classes, o)
				case *corev1.PersistentVolume:
					c.Volumes = append(c.Volumes, o)
				case *corev1.PersistentVolumeClaim:
					c.Claims = append(c.Claims, o)
				}
			}
			it, err := newInTree(ctx, c.Nodes, c.objects())
			if err != nil {
				t.Fatal(err)
			}
			names := c.nodeNames()
			inTree := it.filter(ctx, c.Pod)
			ours := oursVerdicts(memState(c.Nodes, c.objects()), c.Pod, names)
			for _, m := range compare(names, inTree, ours) {
				t.Errorf("%s", m)
			}
		})
	}
}
