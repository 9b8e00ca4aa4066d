package interop

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// useUpstream runs the upstream provisioners and snapshotters for the
// test, which fails if any of them exits on its own meanwhile, and checks
// the invariants (no leaked volume or snapshot, no finalizer left, restored
// data intact) once the test has cleaned up.
func useUpstream(t *testing.T) {
	t.Helper()
	needEnv(t)
	ctx := ctxFor(t, 3*time.Minute)
	if err := controllers.useProvisioners(ctx, upstreamControllers); err != nil {
		t.Fatal(err)
	}
	if err := controllers.useSnapshotters(ctx, upstreamControllers); err != nil {
		t.Fatal(err)
	}
	if err := ensureClasses(ctx); err != nil {
		t.Fatal(err)
	}
	checker := env.NewChecker(harness.CheckOptions{})
	t.Cleanup(func() {
		if err := controllers.crashed(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			return // the invariants would only repeat the failure
		}
		if report := checker.Settle(ctxFor(t, 3*time.Minute), 2*time.Minute); len(report.Violations) > 0 {
			t.Errorf("invariants after the test:\n%s", report)
		}
	})
}

// TestClaimsBindUnderExternalProvisioner: with csi-provisioner beside each
// driver, a late-binding claim of either scope binds to a PV that
// external-provisioner made, whose node affinity is where the driver says
// the volume is reachable from: the pod's node for node scope, the pod's
// zone (any node of it) for zone scope. Deleting the claim deletes the PV
// and the backend volume.
func TestClaimsBindUnderExternalProvisioner(t *testing.T) {
	useUpstream(t)
	cases := []struct {
		name, class string
		// want maps each affinity key to the value it must have given the
		// pod's node's labels; a key mapped to "" must be absent.
		want func(nodeLabels map[string]string) map[string]string
	}{
		{"node scope: the PV is reachable from the pod's node only", nodeClass, func(labels map[string]string) map[string]string {
			return map[string]string{topology.NodeKey: labels[topology.NodeKey], topology.ZoneKey: ""}
		}},
		{"zone scope: the PV is reachable from every node of the pod's zone", zoneClass, func(labels map[string]string) map[string]string {
			return map[string]string{topology.ZoneKey: labels[topology.ZoneKey], topology.RegionKey: labels[topology.RegionKey], topology.NodeKey: ""}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t, 4*time.Minute)
			ns, err := createNamespace(ctx, "interop")
			if err != nil {
				t.Fatal(err)
			}
			if err := createClaimAndPod(ctx, newClaim(ns, "data", tc.class, ""), newPod(ns, "app", "data", "")); err != nil {
				t.Fatal(err)
			}
			pv, node, err := waitBound(ctx, ns, "data", "app", 2*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if pv.Spec.CSI == nil || pv.Spec.CSI.VolumeAttributes[annProvisionerIdentity] == "" {
				t.Fatalf("PV %s was not made by external-provisioner (no %s attribute): %+v", pv.Name, annProvisionerIdentity, pv.Spec.CSI)
			}
			nodeObject, err := env.Cluster.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for key, want := range tc.want(nodeObject.Labels) {
				if got := affinity(pv, key); got != want {
					t.Errorf("PV %s affinity %s = %q, want %q (pod on %s)", pv.Name, key, got, want, node)
				}
			}
			handle := pv.Spec.CSI.VolumeHandle
			if err := deleteClaimsAndWait(ctx, ns, time.Minute); err != nil {
				t.Fatal(err)
			}
			if ids := backendVolumes(ctx, t, node); ids[handle] {
				t.Fatalf("backend volume %s outlived its PV", handle)
			}
		})
	}
}

// TestSnapshotsAndRestoresUnderExternalSnapshotter: with csi-snapshotter
// beside each driver and the snapshot-controller, a snapshot of a volume
// holding written data becomes ready, handled by a node that reaches the
// volume; a claim restored from it holds the same data, read on the same
// node (node scope) or another node of the zone (zone scope). Deleting the
// snapshot deletes its content and the backend snapshot.
func TestSnapshotsAndRestoresUnderExternalSnapshotter(t *testing.T) {
	useUpstream(t)
	cases := []struct {
		name, class string
		// The source is written on writeOn; the restore is read on readOn.
		writeOn, readOn string
	}{
		{"node scope: restored on the node holding the snapshot", nodeClass, "node1", "node1"},
		{"zone scope: restored on another node of the zone", zoneClass, "node1", "node2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t, 5*time.Minute)
			ns, err := createNamespace(ctx, "interop")
			if err != nil {
				t.Fatal(err)
			}
			if err := createClaimAndPod(ctx, newClaim(ns, "source", tc.class, ""), newPod(ns, "writer", "source", tc.writeOn)); err != nil {
				t.Fatal(err)
			}
			source, _, err := waitBound(ctx, ns, "source", "writer", 2*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			written, err := env.WriteData(ctx, tc.writeOn, source.Spec.CSI.VolumeHandle, []byte("written under the upstream sidecars: "+tc.name))
			if err != nil {
				t.Fatal(err)
			}
			// Recorded for the data invariant (useUpstream's cleanup): every
			// restore of this snapshot must hold what the source held now.
			env.Data.Cut(ns, "snap", source.Spec.CSI.VolumeHandle)
			if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, newSnapshot(ns, "snap", "source"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			content, err := waitSnapshotReady(ctx, ns, "snap", 2*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			handle := ptr.Deref(content.Status.SnapshotHandle, "")
			if handle == "" {
				t.Fatalf("content %s is ready without a snapshot handle", content.Name)
			}
			if err := checkManagedBy(ctx, content, source); err != nil {
				t.Fatal(err)
			}

			if err := createClaimAndPod(ctx, newClaim(ns, "restored", tc.class, "snap"), newPod(ns, "reader", "restored", tc.readOn)); err != nil {
				t.Fatal(err)
			}
			restored, _, err := waitBound(ctx, ns, "restored", "reader", 2*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			read, err := env.HashVolume(ctx, tc.readOn, restored.Spec.CSI.VolumeHandle)
			if err != nil {
				t.Fatal(err)
			}
			if read != written {
				t.Fatalf("restore %s read on %s hashes %s; the source held %s when the snapshot was cut", restored.Spec.CSI.VolumeHandle, tc.readOn, read, written)
			}

			if err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "snap", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := waitGone(ctx, "content "+content.Name, 2*time.Minute, func(ctx context.Context) error {
				_, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, content.Name, metav1.GetOptions{})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			listed, err := env.Nodes[tc.writeOn].Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: handle})
			if err != nil {
				t.Fatal(err)
			}
			if len(listed.GetEntries()) != 0 {
				t.Fatalf("backend snapshot %s outlived its content", handle)
			}
			if err := deleteClaimsAndWait(ctx, ns, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkManagedBy: the snapshot-controller assigned the content to a node
// whose driver reaches the source volume, and nothing of toposnap's
// snapshotter touched it (it would have recorded the snapshot's topology).
func checkManagedBy(ctx context.Context, content *snapv1.VolumeSnapshotContent, source *corev1.PersistentVolume) error {
	node := content.Labels[labelManagedBy]
	if node == "" {
		return fmt.Errorf("content %s has no %s label: the snapshot-controller did not distribute it", content.Name, labelManagedBy)
	}
	if _, ok := env.Nodes[node]; !ok {
		return fmt.Errorf("content %s is managed by %s, which runs no driver", content.Name, node)
	}
	nodeObject, err := env.Cluster.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for key, want := range map[string]string{topology.NodeKey: affinity(source, topology.NodeKey), topology.ZoneKey: affinity(source, topology.ZoneKey)} {
		if want != "" && nodeObject.Labels[key] != want {
			return fmt.Errorf("content %s is managed by %s (%s=%s), which does not reach its source (%s=%s)",
				content.Name, node, key, nodeObject.Labels[key], key, want)
		}
	}
	if ann := content.Annotations[topology.AnnAccessibleTopology]; ann != "" {
		return fmt.Errorf("content %s carries %s=%s: toposnap's snapshotter handled it", content.Name, topology.AnnAccessibleTopology, ann)
	}
	return nil
}

// TestRestoreOutsideTheSnapshotsZoneIsRefused: a restore of a zone-scope
// snapshot whose pod can only run in another zone is refused by the driver
// with RESOURCE_EXHAUSTED, which external-provisioner reports on the claim,
// and no PV is ever made for it: the driver never serves a restore from a
// pool the node cannot reach, whoever asks.
func TestRestoreOutsideTheSnapshotsZoneIsRefused(t *testing.T) {
	useUpstream(t)
	ctx := ctxFor(t, 5*time.Minute)
	ns, err := createNamespace(ctx, "interop")
	if err != nil {
		t.Fatal(err)
	}
	if err := createClaimAndPod(ctx, newClaim(ns, "source", zoneClass, ""), newPod(ns, "writer", "source", "node1")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := waitBound(ctx, ns, "source", "writer", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, newSnapshot(ns, "snap", "source"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitSnapshotReady(ctx, ns, "snap", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// node3 is the only node of the second zone.
	if err := createClaimAndPod(ctx, newClaim(ns, "elsewhere", zoneClass, "snap"), newPod(ns, "reader", "elsewhere", cluster.SecondZoneWorker)); err != nil {
		t.Fatal(err)
	}
	var refusal string
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		events, err := env.Cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=elsewhere"})
		if err != nil {
			return false, nil
		}
		for _, e := range events.Items {
			if e.Reason == "ProvisioningFailed" && strings.Contains(e.Message, "ResourceExhausted") {
				refusal = e.Message
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("no ProvisioningFailed event with ResourceExhausted on the claim: %v\nevents:\n%s", err, namespaceEvents(ns))
	}
	t.Logf("refused: %s", refusal)
	claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "elsewhere", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if claim.Spec.VolumeName != "" || claim.Status.Phase != corev1.ClaimPending {
		t.Fatalf("claim restored outside the snapshot's zone is %s, bound to %q", claim.Status.Phase, claim.Spec.VolumeName)
	}
	pvs, err := env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pv := range pvs.Items {
		if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns && ref.Name == "elsewhere" {
			t.Fatalf("PV %s was made for the refused restore", pv.Name)
		}
	}
	if err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "snap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := deleteClaimsAndWait(ctx, ns, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// The refused restore left external-provisioner's source protection on
	// the snapshot; its sweep (every 10 s here, 5 minutes by default) lets
	// the snapshot go once no pending claim names it.
	if err := waitGone(ctx, "VolumeSnapshot "+ns+"/snap", time.Minute, func(ctx context.Context) error {
		_, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "snap", metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// backendVolumes lists the volume IDs node's driver holds (its node pool
// and its zone's pool).
func backendVolumes(ctx context.Context, t *testing.T, node string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	var token string
	for {
		resp, err := env.Nodes[node].Controller.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			t.Fatalf("list volumes on %s: %v", node, err)
		}
		for _, entry := range resp.GetEntries() {
			ids[entry.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			return ids
		}
	}
}
