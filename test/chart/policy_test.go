package chart

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
	"github.com/toposnap/toposnap/test/cluster"
)

const (
	policyRelease   = "policy"
	policyNamespace = "toposnap-policy"
	// policyDriver is csi.toposnap.io; foreignDriver stands for any other.
	policyDriver  = "csi.toposnap.io"
	foreignDriver = "other.csi.example.com"
	nodeKey       = "topology.toposnap.io/node"
	zoneKey       = "topology.kubernetes.io/zone"
	// volumeFinalizer is the provisioner's own PV finalizer.
	volumeFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"
	// heldLease is a zone Lease that node1 holds (createPolicyWorld).
	heldLease = "toposnap-zone-held"
	// candidatesLease is a zone Lease node1 holds whose candidates
	// toposnap-controller wrote (createPolicyWorld).
	candidatesLease = "toposnap-zone-candidates"
)

// longNode is a node whose name is too long for a label value: its route
// is hashed (n-…).
var longNode = strings.Repeat("n", 62)

// clients act as one identity: the node ServiceAccount from some node, or
// from a token bound to no node.
type clients struct {
	kube kubernetes.Interface
	snap snapclient.Interface
}

// nodeServiceAccount returns clients acting as the release's node
// ServiceAccount with the given user extra (nil: a token bound to no pod).
func nodeServiceAccount(t *testing.T, extra map[string][]string) clients {
	t.Helper()
	return serviceAccount(t, "node", extra)
}

// serviceAccount returns clients acting as the release's ServiceAccount of
// component (node, controller).
func serviceAccount(t *testing.T, component string, extra map[string][]string) clients {
	t.Helper()
	config := rest.CopyConfig(testCluster.RestConfig)
	config.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + policyNamespace + ":" + policyRelease + "-toposnap-" + component,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + policyNamespace, "system:authenticated"},
		Extra:    extra,
	}
	kube, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := snapclient.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return clients{kube: kube, snap: snap}
}

// dryRun keeps every checked request from changing anything: admission
// (the policies) still runs, nothing is stored.
var dryRun = []string{metav1.DryRunAll}

// policyCase is one request of the node ServiceAccount and the verdict
// the policies must give; denied requests must be denied by a policy (not
// RBAC) with a message containing because.
type policyCase struct {
	name    string
	as      clients
	request func(ctx context.Context, c clients) error
	because string // "" when the request must be allowed
}

// TestNodeAdmissionPoliciesConfineTheNodeServiceAccount installs the chart
// and sends the node ServiceAccount's requests (server-side dry runs) to
// the real API server, as a pod's bound token on node1 or node2 would, or a
// token bound to no node: what the provisioner and the snapshotter do to
// their own objects is allowed; the same verbs on another driver's objects,
// another node's objects, or fields the components never change are
// denied by the chart's ValidatingAdmissionPolicies. Zone-scope PVs stay
// writable from any node: the documented limit (docs/security.md).
func TestNodeAdmissionPoliciesConfineTheNodeServiceAccount(t *testing.T) {
	needCluster(t)
	ctx := ctxFor(t, 5*time.Minute)
	t.Cleanup(func() {
		_, _ = runHelm(context.Background(), "uninstall", policyRelease, "--namespace", policyNamespace, "--ignore-not-found")
	})
	if out, err := runHelm(ctx, "install", policyRelease, chartDir, "--namespace", policyNamespace, "--create-namespace",
		"-f", "test/chart/testdata/policy.yaml"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	checkPoliciesTypeCheck(t, ctx)
	world := createPolicyWorld(t, ctx)

	node1 := nodeServiceAccount(t, nodeIdentity("node1"))
	node2 := nodeServiceAccount(t, nodeIdentity("node2"))
	noNode := nodeServiceAccount(t, nil)
	nodeLong := nodeServiceAccount(t, nodeIdentity(longNode))
	controller := serviceAccount(t, "controller", nil)
	zonePV := func() *corev1.PersistentVolume {
		return policyPV("policy-new", policyDriver, map[string]string{zoneKey: cluster.SeedZone})
	}
	node1PV := func() *corev1.PersistentVolume {
		return policyPV("policy-new", policyDriver, map[string]string{nodeKey: "node1"})
	}
	cases := []policyCase{
		// PersistentVolumes.
		{"delete own node-scope PV", node1, deletePV("policy-node1"), ""},
		{"delete another node's node-scope PV", node2, deletePV("policy-node1"), "may be written only by the node it names; caller node: node2"},
		{"delete node-scope PV with a token bound to no node", noNode, deletePV("policy-node1"), "token bound to a pod on a node"},
		{"delete another driver's PV", node1, deletePV("policy-foreign"), "may write only PVs of csi.toposnap.io"},
		{"delete a Bound PV", node1, deletePV(world.boundPV), "never deletes a Bound PV"},
		{"delete zone-scope PV from a node of the zone", node1, deletePV("policy-zone"), ""},
		{"delete zone-scope PV from any node (the documented limit)", node2, deletePV("policy-zone"), ""},
		{"create own node-scope PV", node1, createPV(policyPV("policy-new", policyDriver, map[string]string{nodeKey: "node1"})), ""},
		{"create zone-scope PV", node1, createPV(policyPV("policy-new", policyDriver, map[string]string{zoneKey: cluster.SeedZone})), ""},
		{"create own PV routed to itself", node1, createPV(routed(policyPV("policy-new", policyDriver, map[string]string{nodeKey: "node1"}), "n.node1")), ""},
		{"create a zone PV routed to a zone", node1, createPV(routed(policyPV("policy-new", policyDriver, map[string]string{zoneKey: cluster.SeedZone}), "z-0123")), ""},
		{"create own PV routed to another node", node1, createPV(routed(policyPV("policy-new", policyDriver, map[string]string{nodeKey: "node1"}), "n.node2")), "routed only to its own node (n.node1)"},
		{"re-route own PV", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) { pv.Labels = map[string]string{"toposnap.io/route": "n.node2"} }), "may not change the route"},
		{"re-route a content", node1, updateContent("policy-ours", func(c *snapv1.VolumeSnapshotContent) { c.Labels = map[string]string{"toposnap.io/route": "n.node1"} }), "may not change the route"},
		{"re-route a snapshot", node1, updateSnapshot(func(s *snapv1.VolumeSnapshot) { s.Labels = map[string]string{"toposnap.io/route": "n.node1"} }), "may not change the route"},
		{"create PV on another node", node1, createPV(policyPV("policy-new", policyDriver, map[string]string{nodeKey: "node2"})), "caller node: node1"},
		{"create another driver's PV", node1, createPV(policyPV("policy-new", foreignDriver, map[string]string{nodeKey: "node1"})), "may write only PVs of csi.toposnap.io"},
		{"create PV reachable from every node", node1, createPV(policyPV("policy-new", policyDriver, nil)), "confined to a node or a zone"},
		{"create PV not pre-bound to a claim", node1, createPV(withoutClaimRef(policyPV("policy-new", policyDriver, map[string]string{nodeKey: "node1"}))), "pre-bound to its claim"},
		{"create own PV routed by its hashed name", nodeLong, createPV(routed(policyPV("policy-new", policyDriver, map[string]string{nodeKey: longNode}), route.Node(longNode))), ""},
		{"create a zone PV of another node's volume (staged into a pod of the zone on that node)", node2,
			createPV(withHandle(zonePV(), nodeVolumeID("node1", "victim"))), "a node-scope volume handle (vn-) only on a PV pinned to the caller's node"},
		{"create own node's PV of a zone volume", node1, createPV(withHandle(node1PV(), zoneVolumeID("victim"))), "a zone-scope volume handle (vz-) only on a zone PV"},
		{"create a PV whose handle is a path", node1, createPV(withHandle(node1PV(), "../x")), "must be a toposnap volume ID"},
		{"create a PV whose handle is a truncated ID", node1, createPV(withHandle(node1PV(), "vn-abc")), "must be a toposnap volume ID"},
		{"create a PV whose handle is a snapshot ID", node1, createPV(withHandle(node1PV(), "s"+nodeVolumeID("node1", "victim")[1:])), "must be a toposnap volume ID"},
		{"create own node's PV routed to a zone", node1, createPV(routed(node1PV(), "z-0123")), "a node-scope volume (vn-) only to its own node (n.node1)"},
		{"create a zone PV routed to own node", node1, createPV(routed(zonePV(), "n.node1")), "a zone-scope volume (vz-) only to a zone (z-"},
		{"remove own finalizer from own PV", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) {
			pv.Finalizers = slices.DeleteFunc(pv.Finalizers, func(f string) bool { return f == volumeFinalizer })
		}), ""},
		{"remove pv-protection from own PV", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) {
			pv.Finalizers = slices.DeleteFunc(pv.Finalizers, func(f string) bool { return f == "kubernetes.io/pv-protection" })
		}), "only the finalizer"},
		{"grow own PV", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) {
			pv.Spec.Capacity[corev1.ResourceStorage] = resource.MustParse("2Gi")
		}), ""},
		{"shrink own PV", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) {
			pv.Spec.Capacity[corev1.ResourceStorage] = resource.MustParse("512Mi")
		}), "only grow"},
		{"re-point own PV at another claim", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) {
			pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: "victim", Name: "data", UID: "victim-uid"}
		}), "capacity and its own finalizer only"},
		{"turn own Retain PV into Delete", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) {
			pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
		}), "capacity and its own finalizer only"},
		{"add a foreign finalizer to own PV", node1, updatePV("policy-node1", func(pv *corev1.PersistentVolume) { pv.Finalizers = append(pv.Finalizers, "example.com/hold") }), "only the finalizer"},
		{"update another driver's PV", node1, updatePV("policy-foreign", func(pv *corev1.PersistentVolume) { pv.Finalizers = nil }), "may write only PVs of csi.toposnap.io"},

		// PersistentVolumeClaims.
		{"drop selected-node from a claim of csi.toposnap.io", node1, patchClaim("ours", `{"metadata":{"annotations":{"volume.kubernetes.io/selected-node":null}}}`), ""},
		{"drop selected-node from another provisioner's claim", node1, patchClaim("foreign", `{"metadata":{"annotations":{"volume.kubernetes.io/selected-node":null}}}`), "only on claims that csi.toposnap.io provisions"},
		{"point a claim at another node", node1, patchClaim("ours", `{"metadata":{"annotations":{"volume.kubernetes.io/selected-node":"node2"}}}`), "may only remove volume.kubernetes.io/selected-node"},
		{"add an annotation to a claim", node1, patchClaim("ours", `{"metadata":{"annotations":{"example.com/x":"y"}}}`), "only the placement annotations"},
		{"claim an Immediate claim for a zone", node1, patchClaim("ours", `{"metadata":{"annotations":{"toposnap.io/provisioning-zone":"cn-hangzhou/cn-hangzhou-b"}}}`), ""},
		{"give up a zone's claim", node1, patchClaim("zoned", `{"metadata":{"annotations":{"toposnap.io/provisioning-zone":null}}}`), ""},
		{"count a zone giving an Immediate claim back", node1, patchClaim("zoned", `{"metadata":{"annotations":{"toposnap.io/provisioning-zone":null,"toposnap.io/zone-attempts":"1"}}}`), ""},
		{"count attempts on another provisioner's claim", node1, patchClaim("foreign", `{"metadata":{"annotations":{"toposnap.io/zone-attempts":"1"}}}`), "only on claims that csi.toposnap.io provisions"},
		{"move a claim to another zone", node1, patchClaim("zoned", `{"metadata":{"annotations":{"toposnap.io/provisioning-zone":"cn-hangzhou/cn-hangzhou-c"}}}`), "never change it"},
		{"claim another provisioner's claim for a zone", node1, patchClaim("foreign", `{"metadata":{"annotations":{"toposnap.io/provisioning-zone":"cn-hangzhou/cn-hangzhou-b"}}}`), "only on claims that csi.toposnap.io provisions"},
		{"hold a claim being provisioned", node1, updateClaim("foreign", func(claim *corev1.PersistentVolumeClaim) {
			claim.Finalizers = append(claim.Finalizers, "toposnap.io/provisioning-protection")
		}), ""},
		{"label a claim", node1, patchClaim("ours", `{"metadata":{"labels":{"example.com/x":"y"}}}`), "spec or labels"},
		{"add the clone-source finalizer to any claim", node1, updateClaim("foreign", func(claim *corev1.PersistentVolumeClaim) {
			claim.Finalizers = append(claim.Finalizers, "provisioner.storage.kubernetes.io/cloning-protection")
		}), ""},
		{"remove another finalizer from a claim", node1, updateClaim("ours", func(claim *corev1.PersistentVolumeClaim) {
			claim.Finalizers = slices.DeleteFunc(claim.Finalizers, func(f string) bool { return f == "example.com/keep" })
		}), "only the finalizers provisioner.storage.kubernetes.io/cloning-protection and toposnap.io/provisioning-protection"},

		// Leases.
		{"take a zone Lease for its own node", node1, createLease("toposnap-zone-policy", "node1"), ""},
		{"release a zone Lease", node1, createLease("toposnap-zone-policy", ""), ""},
		{"take a zone Lease for another node", node1, createLease("toposnap-zone-policy", "node2"), "caller node: node1"},
		{"take a zone Lease with a token bound to no node", noNode, createLease("toposnap-zone-policy", "node1"), "token bound to a pod on a node"},
		{"take the scheduler's Lease", node1, createLease("toposnap-scheduler", "node1"), "zone-ownership Leases"},
		{"release own zone Lease", node1, updateLease(heldLease, ""), ""},
		{"take over another node's zone Lease (fail-over)", node2, updateLease(heldLease, "node2"), ""},
		{"blank another node's zone Lease", node2, updateLease(heldLease, ""), "only a zone Lease it holds or nobody holds; caller node: node2"},
		{"change a zone Lease's candidates", node1, annotateLease(candidatesLease, "node1"), "toposnap-controller's to write"},
		{"add candidates to a zone Lease", node1, annotateLease(heldLease, "node1"), "toposnap-controller's to write"},
		{"create a zone Lease with candidates", node1, createLeaseWith("toposnap-zone-policy", "node1", ptr.To("node1")), "toposnap-controller's to write"},
		{"renew a zone Lease keeping its candidates", node1, updateLease(candidatesLease, "node1"), ""},
		// toposnap-controller's Leases: its own, and zone Leases' candidates.
		{"controller writes a zone Lease's candidates", controller, annotateLease(candidatesLease, "node2,node3"), ""},
		{"controller creates a zone Lease held by nobody", controller, createLeaseWith("toposnap-zone-policy", "", ptr.To("node1")), ""},
		{"controller creates a zone Lease with a holder", controller, createLeaseWith("toposnap-zone-policy", "node1", ptr.To("node1")), "never a zone Lease's holder"},
		{"controller changes a zone Lease's holder", controller, updateLease(heldLease, "node2"), "never a zone Lease's holder"},
		{"controller takes the scheduler's Lease", controller, createLease("toposnap-scheduler", "x"), "only its own Lease"},

		// CSIStorageCapacity.
		{"publish own node's capacity", node1, createCapacity(map[string]string{nodeKey: "node1"}, policyDriver), ""},
		{"publish the zone's capacity", node2, createCapacity(map[string]string{zoneKey: cluster.SeedZone}, policyDriver), ""},
		{"publish another node's capacity", node1, createCapacity(map[string]string{nodeKey: "node2"}, policyDriver), "caller node: node1"},
		{"publish capacity for every node", node1, createCapacity(map[string]string{}, policyDriver), "one node or one zone"},
		{"publish another driver's capacity", node1, createCapacity(map[string]string{nodeKey: "node1"}, foreignDriver), "csi.storage.k8s.io/drivername=csi.toposnap.io"},

		// VolumeSnapshotContents and VolumeSnapshots.
		{"create a content of csi.toposnap.io", node1, createContent(policyContent("policy-new", policyDriver)), ""},
		{"create another driver's content", node1, createContent(policyContent("policy-new", foreignDriver)), "only VolumeSnapshotContents of csi.toposnap.io"},
		{"release own content (finalizer)", node1, updateContent("policy-ours", func(c *snapv1.VolumeSnapshotContent) {
			c.Finalizers = append(c.Finalizers, "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection")
		}), ""},
		{"bind a pre-provisioned content (uid set once)", node1, updateContent("policy-ours", func(c *snapv1.VolumeSnapshotContent) { c.Spec.VolumeSnapshotRef.UID = "snapshot-uid" }), ""},
		{"turn a Retain content into Delete", node1, updateContent("policy-ours", func(c *snapv1.VolumeSnapshotContent) {
			c.Spec.DeletionPolicy = snapv1.VolumeSnapshotContentDelete
		}), "deletion policy"},
		{"hand a content to another snapshot", node1, updateContent("policy-ours", func(c *snapv1.VolumeSnapshotContent) { c.Spec.VolumeSnapshotRef.Namespace = "victim" }), "snapshot reference"},
		{"update another driver's content", node1, updateContent("policy-foreign", func(c *snapv1.VolumeSnapshotContent) { c.Annotations = map[string]string{"x": "y"} }), "only VolumeSnapshotContents of csi.toposnap.io"},
		{"update another driver's content status", node1, updateContentStatus("policy-foreign"), "only VolumeSnapshotContents of csi.toposnap.io"},
		{"delete own content", node1, deleteContent("policy-ours"), ""},
		{"delete another driver's content", node1, deleteContent("policy-foreign"), "only VolumeSnapshotContents of csi.toposnap.io"},
		{"protect a snapshot being restored", node1, updateSnapshot(func(s *snapv1.VolumeSnapshot) {
			s.Finalizers = append(s.Finalizers, "toposnap.io/restore-source-protection")
		}), ""},
		{"move upstream's as-source finalizer (earlier versions' protection)", node1, updateSnapshot(func(s *snapv1.VolumeSnapshot) {
			s.Finalizers = append(s.Finalizers, "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection")
		}), ""},
		{"add a foreign finalizer to a snapshot", node1, updateSnapshot(func(s *snapv1.VolumeSnapshot) { s.Finalizers = append(s.Finalizers, "example.com/hold") }), "snapshot protection finalizers"},
		{"change a snapshot's class", node1, updateSnapshot(func(s *snapv1.VolumeSnapshot) { s.Spec.VolumeSnapshotClassName = ptr.To("other-class") }), "spec"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.request(ctx, tc.as)
			switch {
			case tc.because == "" && err != nil:
				t.Fatalf("denied: %v", err)
			case tc.because == "":
			case err == nil:
				t.Fatalf("allowed; want a policy denial saying %q", tc.because)
			case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy"):
				t.Fatalf("denied, but not by an admission policy: %v", err)
			case !strings.Contains(err.Error(), tc.because):
				t.Fatalf("denied for another reason: %v; want %q", err, tc.because)
			}
		})
	}
}

// checkPoliciesTypeCheck waits until the API server has type-checked every
// policy of the release against the resources' schemas and fails on any
// warning (a misspelt field compiles, but never matches).
func checkPoliciesTypeCheck(t *testing.T, ctx context.Context) {
	t.Helper()
	api := testCluster.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies()
	for _, suffix := range []string{"node-volumes", "node-claims", "node-contents", "node-snapshots", "node-capacities", "node-leases", "controller-leases"} {
		name := policyRelease + "-toposnap-" + suffix
		err := cluster.Poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
			policy, err := api.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if policy.Status.ObservedGeneration != policy.Generation || policy.Status.TypeChecking == nil {
				return false, nil
			}
			for _, warning := range policy.Status.TypeChecking.ExpressionWarnings {
				t.Errorf("policy %s, %s: %s", name, warning.FieldRef, warning.Warning)
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("policy %s not type-checked: %v", name, err)
		}
	}
}

// policyWorld names what createPolicyWorld made that the cases need.
type policyWorld struct {
	boundPV string
}

// createPolicyWorld creates, as admin, the objects the cases act on and
// waits until the policies are enforced.
func createPolicyWorld(t *testing.T, ctx context.Context) policyWorld {
	t.Helper()
	client := testCluster.Client
	snap, err := snapclient.NewForConfig(testCluster.RestConfig)
	if err != nil {
		t.Fatal(err)
	}
	pvs := []*corev1.PersistentVolume{
		policyPV("policy-node1", policyDriver, map[string]string{nodeKey: "node1"}),
		policyPV("policy-zone", policyDriver, map[string]string{zoneKey: cluster.SeedZone}),
		policyPV("policy-foreign", foreignDriver, map[string]string{nodeKey: "node1"}),
	}
	zoned := policyClaim("zoned", policyDriver)
	zoned.Annotations["toposnap.io/provisioning-zone"] = cluster.SeedRegion + "/" + cluster.SeedZone
	claims := []*corev1.PersistentVolumeClaim{
		policyClaim("ours", policyDriver),
		policyClaim("foreign", foreignDriver),
		zoned,
	}
	// A Bound PV: pre-bound both ways, the PV controller completes it.
	bound := policyClaim("bound", policyDriver)
	bound.Spec.StorageClassName = ptr.To("")
	bound.Spec.VolumeName = "policy-bound"
	claims = append(claims, bound)
	for _, claim := range claims {
		created, err := client.CoreV1().PersistentVolumeClaims(policyNamespace).Create(ctx, claim, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			api := testCluster.Client.CoreV1().PersistentVolumeClaims(policyNamespace)
			_, _ = api.Patch(context.Background(), claim.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			_ = api.Delete(context.Background(), claim.Name, metav1.DeleteOptions{})
		})
		if created.Name == "bound" {
			boundPV := policyPV("policy-bound", policyDriver, map[string]string{nodeKey: "node1"})
			boundPV.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: policyNamespace, Name: created.Name, UID: created.UID}
			pvs = append(pvs, boundPV)
		}
	}
	for _, pv := range pvs {
		if _, err := client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteAsAdmin(t, pv.Name) })
	}
	for _, content := range []*snapv1.VolumeSnapshotContent{policyContent("policy-ours", policyDriver), policyContent("policy-foreign", foreignDriver)} {
		if _, err := snap.SnapshotV1().VolumeSnapshotContents().Create(ctx, content, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = snap.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), content.Name, metav1.DeleteOptions{})
		})
	}
	held := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: heldLease, Namespace: policyNamespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("node1"), LeaseDurationSeconds: ptr.To[int32](15)}}
	if _, err := client.CoordinationV1().Leases(policyNamespace).Create(ctx, held, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = testCluster.Client.CoordinationV1().Leases(policyNamespace).Delete(context.Background(), heldLease, metav1.DeleteOptions{})
	})
	withCandidates := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: candidatesLease, Namespace: policyNamespace,
		Annotations: map[string]string{kube.CandidatesAnnotation: "node1,node3"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("node1"), LeaseDurationSeconds: ptr.To[int32](15)}}
	if _, err := client.CoordinationV1().Leases(policyNamespace).Create(ctx, withCandidates, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = testCluster.Client.CoordinationV1().Leases(policyNamespace).Delete(context.Background(), candidatesLease, metav1.DeleteOptions{})
	})
	snapshot := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "policy", Namespace: policyNamespace},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("ours")}},
	}
	if _, err := snap.SnapshotV1().VolumeSnapshots(policyNamespace).Create(ctx, snapshot, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = snap.SnapshotV1().VolumeSnapshots(policyNamespace).Delete(context.Background(), snapshot.Name, metav1.DeleteOptions{})
	})
	err = cluster.Poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, "policy-bound", metav1.GetOptions{})
		return err == nil && pv.Status.Phase == corev1.VolumeBound, nil
	})
	if err != nil {
		t.Fatalf("PV policy-bound never became Bound: %v", err)
	}
	// The API server enforces a policy once its informers hold it and its
	// binding: wait for a denial from each before judging anything.
	node2 := nodeServiceAccount(t, nodeIdentity("node2"))
	sentinels := []func(ctx context.Context, c clients) error{
		deletePV("policy-foreign"),
		patchClaim("ours", `{"metadata":{"labels":{"example.com/x":"y"}}}`),
		deleteContent("policy-foreign"),
		updateSnapshot(func(s *snapv1.VolumeSnapshot) { s.Finalizers = append(s.Finalizers, "example.com/hold") }),
		createCapacity(map[string]string{nodeKey: "node1"}, policyDriver),
		createLease("toposnap-scheduler", "node2"),
	}
	for i, sentinel := range sentinels {
		err := cluster.Poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
			err := sentinel(ctx, node2)
			return err != nil && strings.Contains(err.Error(), "ValidatingAdmissionPolicy"), nil
		})
		if err != nil {
			t.Fatalf("policy %d never enforced: %v", i, err)
		}
	}
	return policyWorld{boundPV: "policy-bound"}
}

// deleteAsAdmin removes a test PV, finalizers and all.
func deleteAsAdmin(t *testing.T, name string) {
	ctx := context.Background()
	api := testCluster.Client.CoreV1().PersistentVolumes()
	if _, err := api.Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Logf("clean up PV %s: %v", name, err)
	}
	_ = api.Delete(ctx, name, metav1.DeleteOptions{})
}

// policyPV is a PV as the provisioner makes it: driver, provisioned-by,
// the provisioner's finalizer, pre-bound to a claim, the volume ID of its
// scope (of the node it names, else of the zone); affinity is its one
// node selector term (nil: no nodeAffinity). Retain, so the PV controller
// leaves it alone.
func policyPV(name, driver string, affinity map[string]string) *corev1.PersistentVolume {
	handle := zoneVolumeID(name)
	if node, ok := affinity[nodeKey]; ok {
		handle = nodeVolumeID(node, name)
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": driver},
			Finalizers:  []string{volumeFinalizer},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: policyNamespace, Name: "gone", UID: types.UID("gone-" + name)},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: handle}},
		},
	}
	if affinity != nil {
		var term corev1.NodeSelectorTerm
		for key, value := range affinity {
			term.MatchExpressions = append(term.MatchExpressions, corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpIn, Values: []string{value}})
		}
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{term}}}
	}
	return pv
}

// nodeVolumeID is the ID the driver on node gives the volume named name
// (vn-…).
func nodeVolumeID(node, name string) string {
	return volumeid.MakeID(volumeid.KindVolume, topology.ScopeNode, node, name)
}

// zoneVolumeID is the ID of the seed zone's volume named name (vz-…).
func zoneVolumeID(name string) string {
	return volumeid.MakeID(volumeid.KindVolume, topology.ScopeZone, cluster.SeedRegion+"/"+cluster.SeedZone, name)
}

// withHandle gives pv the volume handle.
func withHandle(pv *corev1.PersistentVolume, handle string) *corev1.PersistentVolume {
	pv.Spec.CSI.VolumeHandle = handle
	return pv
}

func withoutClaimRef(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
	pv.Spec.ClaimRef = nil
	return pv
}

// policyClaim is a Pending claim of a class that does not exist (nothing
// provisions it), selected for node1, with provisioner's annotation and a
// finalizer of its own.
func policyClaim(name, provisioner string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: policyNamespace,
			Annotations: map[string]string{"volume.kubernetes.io/selected-node": "node1", "volume.kubernetes.io/storage-provisioner": provisioner},
			Finalizers:  []string{"example.com/keep"},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To("policy-no-such-class"),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
}

// policyContent is a pre-provisioned Retain content for the snapshot
// "policy", not bound yet (no uid).
func policyContent(name, driver string) *snapv1.VolumeSnapshotContent {
	return &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver:            driver,
			DeletionPolicy:    snapv1.VolumeSnapshotContentRetain,
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To("handle-" + name)},
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: policyNamespace, Name: "policy"},
		},
	}
}

func deletePV(name string) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		return c.kube.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{DryRun: dryRun})
	}
}

// routed gives pv the route label value.
func routed(pv *corev1.PersistentVolume, value string) *corev1.PersistentVolume {
	pv.Labels = map[string]string{"toposnap.io/route": value}
	return pv
}

func createPV(pv *corev1.PersistentVolume) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		_, err := c.kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{DryRun: dryRun})
		return err
	}
}

// updatePV reads the PV as admin, changes it and sends the update as c.
func updatePV(name string, change func(*corev1.PersistentVolume)) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			pv, err := testCluster.Client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("read PV %s: %w", name, err)
			}
			change(pv)
			_, err = c.kube.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{DryRun: dryRun})
			return err
		})
	}
}

func patchClaim(name, patch string) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		_, err := c.kube.CoreV1().PersistentVolumeClaims(policyNamespace).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{DryRun: dryRun})
		return err
	}
}

// updateClaim reads the claim as admin, changes it and sends the update
// as c.
func updateClaim(name string, change func(*corev1.PersistentVolumeClaim)) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			claim, err := testCluster.Client.CoreV1().PersistentVolumeClaims(policyNamespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("read claim %s: %w", name, err)
			}
			change(claim)
			_, err = c.kube.CoreV1().PersistentVolumeClaims(policyNamespace).Update(ctx, claim, metav1.UpdateOptions{DryRun: dryRun})
			return err
		})
	}
}

func createLease(name, holder string) func(context.Context, clients) error {
	return createLeaseWith(name, holder, nil)
}

// createLeaseWith is createLease with a candidates annotation, if any.
func createLeaseWith(name, holder string, candidates *string) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: policyNamespace},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To[int32](15)}}
		if candidates != nil {
			lease.Annotations = map[string]string{kube.CandidatesAnnotation: *candidates}
		}
		_, err := c.kube.CoordinationV1().Leases(policyNamespace).Create(ctx, lease, metav1.CreateOptions{DryRun: dryRun})
		return err
	}
}

// updateLease reads the Lease as admin, names holder as its holder and
// sends the update as c.
func updateLease(name, holder string) func(context.Context, clients) error {
	return editLease(name, func(lease *coordinationv1.Lease) { lease.Spec.HolderIdentity = ptr.To(holder) })
}

// annotateLease reads the Lease as admin, sets its candidates and sends
// the update as c.
func annotateLease(name, candidates string) func(context.Context, clients) error {
	return editLease(name, func(lease *coordinationv1.Lease) {
		if lease.Annotations == nil {
			lease.Annotations = map[string]string{}
		}
		lease.Annotations[kube.CandidatesAnnotation] = candidates
	})
}

// editLease reads the Lease as admin, applies edit and sends the update as c.
func editLease(name string, edit func(*coordinationv1.Lease)) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			lease, err := testCluster.Client.CoordinationV1().Leases(policyNamespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("read Lease %s: %w", name, err)
			}
			edit(lease)
			_, err = c.kube.CoordinationV1().Leases(policyNamespace).Update(ctx, lease, metav1.UpdateOptions{DryRun: dryRun})
			return err
		})
	}
}

func createCapacity(segment map[string]string, driver string) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		capacity := &storagev1.CSIStorageCapacity{
			ObjectMeta:       metav1.ObjectMeta{Name: "toposnap-policy", Namespace: policyNamespace, Labels: map[string]string{"csi.storage.k8s.io/drivername": driver}},
			NodeTopology:     &metav1.LabelSelector{MatchLabels: segment},
			StorageClassName: "policy-node",
			Capacity:         ptr.To(resource.MustParse("10Gi")),
		}
		_, err := c.kube.StorageV1().CSIStorageCapacities(policyNamespace).Create(ctx, capacity, metav1.CreateOptions{DryRun: dryRun})
		return err
	}
}

func createContent(content *snapv1.VolumeSnapshotContent) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		_, err := c.snap.SnapshotV1().VolumeSnapshotContents().Create(ctx, content, metav1.CreateOptions{DryRun: dryRun})
		return err
	}
}

// updateContent reads the content as admin, changes it and sends the
// update as c.
func updateContent(name string, change func(*snapv1.VolumeSnapshotContent)) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		admin, err := snapclient.NewForConfig(testCluster.RestConfig)
		if err != nil {
			return err
		}
		content, err := admin.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read content %s: %w", name, err)
		}
		change(content)
		_, err = c.snap.SnapshotV1().VolumeSnapshotContents().Update(ctx, content, metav1.UpdateOptions{DryRun: dryRun})
		return err
	}
}

func updateContentStatus(name string) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		content, err := c.snap.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read content %s: %w", name, err)
		}
		content.Status = &snapv1.VolumeSnapshotContentStatus{ReadyToUse: ptr.To(true), SnapshotHandle: ptr.To("handle-" + name)}
		_, err = c.snap.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, content, metav1.UpdateOptions{DryRun: dryRun})
		return err
	}
}

func deleteContent(name string) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		return c.snap.SnapshotV1().VolumeSnapshotContents().Delete(ctx, name, metav1.DeleteOptions{DryRun: dryRun})
	}
}

func updateSnapshot(change func(*snapv1.VolumeSnapshot)) func(context.Context, clients) error {
	return func(ctx context.Context, c clients) error {
		snapshot, err := c.snap.SnapshotV1().VolumeSnapshots(policyNamespace).Get(ctx, "policy", metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		change(snapshot)
		_, err = c.snap.SnapshotV1().VolumeSnapshots(policyNamespace).Update(ctx, snapshot, metav1.UpdateOptions{DryRun: dryRun})
		return err
	}
}
