package e2e

// Adversarial end-to-end cases (issue 10): a user deleting things in every
// order, two zones competing for one claim, one namespace reaching for
// another's snapshot, claims deleted mid-provisioning. Each case ends by
// letting the cluster settle and checking every invariant of
// harness.Checker, so a case fails on a lost or leaked byte even when its
// own assertions pass.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/provisioner"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// TestDeleteBoundPVAndClaimInEveryOrder deletes the PV, the claim and the
// pod of a written volume in each of the six orders, for node and zone
// volumes. While the claim exists (bound, in use, or deleted but held by
// its pod) the data must stay intact: deleting a bound PV only marks it, as
// upstream keeps the volume until the PV is Released. Once all three are
// deleted, the PV and its backend volume go.
func TestDeleteBoundPVAndClaimInEveryOrder(t *testing.T) {
	needEnv(t)
	ns := adversarialNamespace(t)
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone", "zone", cluster.SeedZone)
	orders := [][]string{
		{"pv", "claim", "pod"}, {"pv", "pod", "claim"}, {"claim", "pv", "pod"},
		{"claim", "pod", "pv"}, {"pod", "pv", "claim"}, {"pod", "claim", "pv"},
	}
	t.Run("orders", func(t *testing.T) {
		g := &group{t: t}
		seed := uint64(0)
		for _, order := range orders {
			for _, class := range []string{"e2e-node", "e2e-zone"} {
				seed++
				name := strings.Join(order, "-") + "-" + strings.TrimPrefix(class, "e2e-")
				g.run(name, func(t *testing.T) {
					deleteInOrder(t, ns, name, class, order, seed)
				})
			}
		}
		g.wait()
	})
	assertInvariants(t)
}

func deleteInOrder(t *testing.T, ns, name, class string, order []string, seed uint64) {
	createClaim(t, ns, name, class, "16Mi", nil)
	createPod(t, ns, name+"-pod", name)
	pv, node := waitBound(t, ns, name, name+"-pod")
	handle := pv.Spec.CSI.VolumeHandle
	hash := writeRandom(t, node, handle, 1<<20, seed)
	for _, step := range order {
		switch step {
		case "pv":
			if err := env.Cluster.Client.CoreV1().PersistentVolumes().Delete(ctxFor(t, time.Minute), pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		case "claim":
			deleteClaim(t, ns, name)
		case "pod":
			deletePod(t, ns, name+"-pod")
		}
		// The buggy path wipes a deleted bound PV within a second; watch
		// for four. Once the claim is gone the PV is Released and may go.
		holdsFor(t, 4*time.Second, fmt.Sprintf("after deleting the %s of claim %s/%s (order %v), its data must stay while the claim exists", step, ns, name, order),
			func(ctx context.Context) error {
				err := dataIntact(node, handle, hash)(ctx)
				if err == nil {
					return nil
				}
				if _, getErr := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(getErr) {
					return nil
				}
				return err
			})
	}
	waitGone(t, "claim "+ns+"/"+name, getClaim(ns, name), 90*time.Second)
	waitGone(t, "PV "+pv.Name, getPV(pv.Name), 90*time.Second)
	if nodes := volumeNodes(t, handle); len(nodes) > 0 {
		t.Errorf("backend volume %s of deleted Delete-policy PV %s is still on %v", handle, pv.Name, nodes)
	}
}

// TestDeleteSourcesAroundSnapshots deletes snapshot sources before, while
// and after their snapshots are cut, and snapshots while they are being
// restored. A snapshot outlives its source (a restore after the source is
// gone holds the data of the cut); every snapshot can be deleted whatever
// happened to its source, and takes its content and backend snapshot along.
func TestDeleteSourcesAroundSnapshots(t *testing.T) {
	needEnv(t)
	ns := adversarialNamespace(t)
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone", "zone", cluster.SeedZone)
	ensureSnapshotClass(t)
	t.Run("cases", func(t *testing.T) {
		g := &group{t: t}
		for i, class := range []string{"e2e-node", "e2e-zone"} {
			scope := strings.TrimPrefix(class, "e2e-")
			seed := uint64(100 + 10*i)
			g.run("source deleted after the cut, then restored from the snapshot/"+scope, func(t *testing.T) {
				sourceDeletedAfterCut(t, ns, "after-"+scope, class, seed)
			})
			g.run("snapshot deleted before its source/"+scope, func(t *testing.T) {
				snapshotDeletedFirst(t, ns, "first-"+scope, class, seed+1)
			})
			g.run("source deleted while the snapshot is cut/"+scope, func(t *testing.T) {
				sourceDeletedDuringCut(t, ns, "during-"+scope, class, seed+2)
			})
			g.run("snapshot deleted while it is restored/"+scope, func(t *testing.T) {
				snapshotDeletedDuringRestore(t, ns, "restoring-"+scope, class, seed+3)
			})
		}
		g.run("snapshot of a source deleted before the snapshot", func(t *testing.T) {
			createClaim(t, ns, "gone-src", "e2e-node", "16Mi", nil)
			deleteClaim(t, ns, "gone-src")
			waitGone(t, "claim gone-src", getClaim(ns, "gone-src"), time.Minute)
			createSnapshot(t, ns, "of-gone", "gone-src", "")
			deleteAndWaitGone(t, "VolumeSnapshot of-gone", func(ctx context.Context) error {
				return env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "of-gone", metav1.DeleteOptions{})
			}, getSnapshot(ns, "of-gone"), 90*time.Second)
		})
		g.wait()
	})
	assertInvariants(t)
}

// writtenSource makes a bound, written claim and returns its PV, node and hash.
func writtenSource(t *testing.T, ns, name, class string, seed uint64) (*corev1.PersistentVolume, string, string) {
	t.Helper()
	createClaim(t, ns, name, class, "16Mi", nil)
	createPod(t, ns, name+"-pod", name)
	pv, node := waitBound(t, ns, name, name+"-pod")
	return pv, node, writeRandom(t, node, pv.Spec.CSI.VolumeHandle, 1<<20, seed)
}

// cut creates a snapshot of a written claim, recording the cut in the ledger.
func cut(t *testing.T, ns, snapshot, claim string, pv *corev1.PersistentVolume) {
	t.Helper()
	if !env.Data.Cut(ns, snapshot, pv.Spec.CSI.VolumeHandle) {
		t.Fatalf("source %s of snapshot %s/%s was not written through the harness", pv.Name, ns, snapshot)
	}
	createSnapshot(t, ns, snapshot, claim, "")
}

// deleteClaimAndPod deletes a claim with its pod and waits for its PV to go.
func deleteClaimAndPod(t *testing.T, ns, claim, pod, pvName string) {
	t.Helper()
	deletePod(t, ns, pod)
	deleteClaim(t, ns, claim)
	waitGone(t, "claim "+ns+"/"+claim, getClaim(ns, claim), 90*time.Second)
	if pvName != "" {
		waitGone(t, "PV "+pvName, getPV(pvName), 90*time.Second)
	}
}

// deleteSnapshotAndWait deletes a snapshot and waits for it and its content
// to go, and for the backend snapshot to be gone from every driver.
func deleteSnapshotAndWait(t *testing.T, ns, name string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	contentName := ""
	if snap.Status != nil {
		contentName = ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "")
	}
	handle := ""
	if contentName != "" {
		if content, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{}); err == nil && content.Status != nil {
			handle = ptr.Deref(content.Status.SnapshotHandle, "")
		}
	}
	deleteSnapshot(t, ns, name)
	waitGone(t, "VolumeSnapshot "+ns+"/"+name, getSnapshot(ns, name), 90*time.Second)
	if contentName != "" {
		waitGone(t, "VolumeSnapshotContent "+contentName, getContent(contentName), 90*time.Second)
	}
	if handle != "" {
		if nodes := snapshotNodes(t, handle); len(nodes) > 0 {
			t.Errorf("backend snapshot %s of deleted VolumeSnapshot %s/%s is still on %v", handle, ns, name, nodes)
		}
	}
}

// snapshotNodes lists which workers' drivers list the backend snapshot.
func snapshotNodes(t *testing.T, id string) []string {
	t.Helper()
	var nodes []string
	for _, name := range env.Workers() {
		resp, err := env.Nodes[name].Controller.ListSnapshots(ctxFor(t, time.Minute), &csi.ListSnapshotsRequest{SnapshotId: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 0 {
			nodes = append(nodes, name)
		}
	}
	return nodes
}

func sourceDeletedAfterCut(t *testing.T, ns, name, class string, seed uint64) {
	pv, _, hash := writtenSource(t, ns, name, class, seed)
	cut(t, ns, name+"-snap", name, pv)
	waitSnapshotReady(t, ns, name+"-snap")
	deleteClaimAndPod(t, ns, name, name+"-pod", pv.Name)
	createClaim(t, ns, name+"-restore", class, "16Mi", snapshotSource(name+"-snap"))
	createPod(t, ns, name+"-reader", name+"-restore")
	restored, node := waitBound(t, ns, name+"-restore", name+"-reader")
	if err := dataIntact(node, restored.Spec.CSI.VolumeHandle, hash)(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("restore after the source was deleted: %v", err)
	}
	deleteClaimAndPod(t, ns, name+"-restore", name+"-reader", restored.Name)
	deleteSnapshotAndWait(t, ns, name+"-snap")
}

func snapshotDeletedFirst(t *testing.T, ns, name, class string, seed uint64) {
	pv, node, hash := writtenSource(t, ns, name, class, seed)
	cut(t, ns, name+"-snap", name, pv)
	waitSnapshotReady(t, ns, name+"-snap")
	deleteSnapshotAndWait(t, ns, name+"-snap")
	if err := dataIntact(node, pv.Spec.CSI.VolumeHandle, hash)(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("source after its snapshot was deleted: %v", err)
	}
	deleteClaimAndPod(t, ns, name, name+"-pod", pv.Name)
}

func sourceDeletedDuringCut(t *testing.T, ns, name, class string, seed uint64) {
	pv, _, _ := writtenSource(t, ns, name, class, seed)
	cut(t, ns, name+"-snap", name, pv)
	deletePod(t, ns, name+"-pod")
	deleteClaim(t, ns, name)
	// Either the cut wins (the source is protected until it is done) or the
	// snapshot fails; both are settled states. Neither may stop the
	// snapshot and the source from being deleted.
	ctx := ctxFor(t, 2*time.Minute)
	if err := poll(ctx, 200*time.Millisecond, 90*time.Second, func() (bool, error) {
		snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name+"-snap", metav1.GetOptions{})
		if err != nil || snap.Status == nil {
			return false, nil
		}
		return ptr.Deref(snap.Status.ReadyToUse, false) || snap.Status.Error != nil, nil
	}); err != nil {
		t.Fatalf("snapshot %s/%s-snap of a source deleted during the cut neither became ready nor failed: %v", ns, name, err)
	}
	deleteSnapshotAndWait(t, ns, name+"-snap")
	waitGone(t, "claim "+ns+"/"+name, getClaim(ns, name), 90*time.Second)
	waitGone(t, "PV "+pv.Name, getPV(pv.Name), 90*time.Second)
}

func snapshotDeletedDuringRestore(t *testing.T, ns, name, class string, seed uint64) {
	pv, _, hash := writtenSource(t, ns, name, class, seed)
	cut(t, ns, name+"-snap", name, pv)
	waitSnapshotReady(t, ns, name+"-snap")
	createClaim(t, ns, name+"-restore", class, "16Mi", snapshotSource(name+"-snap"))
	createPod(t, ns, name+"-reader", name+"-restore")
	// Delete the snapshot once the restore has begun (toposnap's
	// restore-source-protection finalizer is on it) or, when the
	// restore was too quick to catch, has ended.
	ctx := ctxFor(t, 2*time.Minute)
	if err := poll(ctx, 20*time.Millisecond, time.Minute, func() (bool, error) {
		snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name+"-snap", metav1.GetOptions{})
		if err == nil && slices.Contains(snap.Finalizers, provisioner.FinalizerRestoreSource) {
			return true, nil
		}
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name+"-restore", metav1.GetOptions{})
		return err == nil && claim.Spec.VolumeName != "", nil
	}); err != nil {
		t.Fatalf("restore of %s/%s-snap never began: %v\nevents:\n%s", ns, name, err, claimEvents(ctx, ns, name+"-restore"))
	}
	deleteSnapshot(t, ns, name+"-snap")
	// The restore began before the deletion: it must finish with the cut's
	// data (its source is protected while it runs), and then the snapshot
	// must go.
	restored, node := waitBound(t, ns, name+"-restore", name+"-reader")
	if err := dataIntact(node, restored.Spec.CSI.VolumeHandle, hash)(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("restore of a snapshot deleted meanwhile: %v", err)
	}
	waitGone(t, "VolumeSnapshot "+ns+"/"+name+"-snap", getSnapshot(ns, name+"-snap"), 90*time.Second)
	deleteClaimAndPod(t, ns, name+"-restore", name+"-reader", restored.Name)
	deleteClaimAndPod(t, ns, name, name+"-pod", pv.Name)
}

// TestClaimsInTwoZones runs Immediate and WaitForFirstConsumer claims in a
// cluster whose workers are in two zones, each zone with its own pool
// (node1 and node2 in the seed's zone, node3 alone in the second). An
// Immediate zone claim the class lets go anywhere gets exactly one volume,
// not one per zone; every volume lands where its class, pod or snapshot
// says, and is listed only by its zone's (or node's) driver.
func TestClaimsInTwoZones(t *testing.T) {
	needEnv(t)
	if len(env.Zones()) < 2 {
		t.Fatalf("the e2e environment has workers in zones %v; this test needs two", env.Zones())
	}
	ns := adversarialNamespace(t)
	seedZoneNodes := env.Zones()[cluster.SeedZone]
	secondZoneNodes := env.Zones()[cluster.SecondZone]
	createImmediateClass(t, "e2e-zone-immediate", "zone")
	createImmediateClass(t, "e2e-zone-immediate-b", "zone", cluster.SeedZone)
	createImmediateClass(t, "e2e-zone-immediate-c", "zone", cluster.SecondZone)
	createImmediateClass(t, "e2e-node-immediate", "node")
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone-any", "zone")
	createClass(t, "e2e-zone-c", "zone", cluster.SecondZone)
	ensureSnapshotClass(t)

	t.Run("cases", func(t *testing.T) {
		g := &group{t: t}
		immediate := []struct {
			claim, class string
			wantNodes    []string // nil: either zone's nodes
		}{
			{"imm-any", "e2e-zone-immediate", nil},
			{"imm-b", "e2e-zone-immediate-b", seedZoneNodes},
			{"imm-c", "e2e-zone-immediate-c", secondZoneNodes},
		}
		for _, tt := range immediate {
			g.run("immediate claim of "+tt.class+" gets one volume in one zone", func(t *testing.T) {
				name := tt.claim
				createClaim(t, ns, name, tt.class, "16Mi", nil)
				pv := waitClaimBound(t, ns, name)
				nodes := volumeNodes(t, pv.Spec.CSI.VolumeHandle)
				if !sameSet(nodes, seedZoneNodes) && !sameSet(nodes, secondZoneNodes) {
					t.Errorf("volume %s is listed by %v, want exactly one zone's nodes (%v or %v)", pv.Spec.CSI.VolumeHandle, nodes, seedZoneNodes, secondZoneNodes)
				}
				if tt.wantNodes != nil && !sameSet(nodes, tt.wantNodes) {
					t.Errorf("volume of class %s is listed by %v, want %v", tt.class, nodes, tt.wantNodes)
				}
				// Every zone's Lease holder sees the claim; only one may act.
				holdsFor(t, 5*time.Second, "claim "+ns+"/"+name+" must get exactly one backend volume", func(ctx context.Context) error {
					return exactlyOneVolume(t, ctx, pv)
				})
			})
		}
		g.run("each zone's Leases are held by a node of that zone", func(t *testing.T) {
			ctx := ctxFor(t, 2*time.Minute)
			for zone, nodes := range env.Zones() {
				for _, lease := range []string{provisioner.ZoneLeaseName(cluster.SeedRegion, zone), kube.SnapshotLeaseName(cluster.SeedRegion, zone)} {
					var holder string
					if err := poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
						got, err := env.Cluster.Client.CoordinationV1().Leases("default").Get(ctx, lease, metav1.GetOptions{})
						if err != nil {
							return false, nil
						}
						holder = ptr.Deref(got.Spec.HolderIdentity, "")
						return holder != "", nil
					}); err != nil {
						t.Fatalf("zone %s's Lease default/%s has no holder: %v", zone, lease, err)
					}
					if !slices.Contains(nodes, holder) {
						t.Errorf("zone %s's Lease %s is held by %q, not by one of its nodes %v", zone, lease, holder, nodes)
					}
				}
			}
		})
		g.run("immediate node claim gets at most one volume", func(t *testing.T) {
			createClaim(t, ns, "imm-node", "e2e-node-immediate", "16Mi", nil)
			claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctxFor(t, time.Minute), "imm-node", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			holdsFor(t, 5*time.Second, "an Immediate node claim (no node to pick) must get at most one volume", func(ctx context.Context) error {
				if ids := volumesNamed(t, ctx, provisioner.PVName(claim)); len(ids) > 1 {
					return fmt.Errorf("volumes %v", ids)
				}
				return nil
			})
		})
		g.run("zone claim follows its pod into the second zone, and so do restores of it", func(t *testing.T) {
			createClaim(t, ns, "zc", "e2e-zone-any", "16Mi", nil)
			createPodIn(t, ns, "zc-pod", "zc", inSecondZone)
			pv, node := waitBound(t, ns, "zc", "zc-pod")
			assertPlaced(t, pv, topology.ZoneKey, cluster.SecondZone, secondZoneNodes)
			writeRandom(t, node, pv.Spec.CSI.VolumeHandle, 1<<20, 300)
			cut(t, ns, "zc-snap", "zc", pv)
			waitSnapshotReady(t, ns, "zc-snap")
			createClaim(t, ns, "zc-restore", "e2e-zone-any", "16Mi", snapshotSource("zc-snap"))
			createPodIn(t, ns, "zc-reader", "zc-restore", nil)
			restored, readerNode := waitBound(t, ns, "zc-restore", "zc-reader")
			if readerNode != cluster.SecondZoneWorker {
				t.Errorf("restore of a snapshot in zone %s ran on %s", cluster.SecondZone, readerNode)
			}
			assertPlaced(t, restored, topology.ZoneKey, cluster.SecondZone, secondZoneNodes)
		})
		g.run("node claim on the second zone's worker", func(t *testing.T) {
			createClaim(t, ns, "nc", "e2e-node", "16Mi", nil)
			createPodIn(t, ns, "nc-pod", "nc", inSecondZone)
			pv, node := waitBound(t, ns, "nc", "nc-pod")
			assertPlaced(t, pv, topology.NodeKey, node, []string{cluster.SecondZoneWorker})
			writeRandom(t, node, pv.Spec.CSI.VolumeHandle, 1<<20, 301)
		})
		g.run("class allowing only the second zone places its pod there", func(t *testing.T) {
			createClaim(t, ns, "only-c", "e2e-zone-c", "16Mi", nil)
			createPodIn(t, ns, "only-c-pod", "only-c", nil)
			pv, node := waitBound(t, ns, "only-c", "only-c-pod")
			if node != cluster.SecondZoneWorker {
				t.Errorf("pod of a class allowing only %s ran on %s", cluster.SecondZone, node)
			}
			assertPlaced(t, pv, topology.ZoneKey, cluster.SecondZone, secondZoneNodes)
		})
		g.run("zone claim in the seed zone is shared by its nodes only", func(t *testing.T) {
			createClaim(t, ns, "zb", "e2e-zone-any", "16Mi", nil)
			createPodIn(t, ns, "zb-pod", "zb", map[string]string{topology.ZoneKey: cluster.SeedZone})
			pv, node := waitBound(t, ns, "zb", "zb-pod")
			assertPlaced(t, pv, topology.ZoneKey, cluster.SeedZone, seedZoneNodes)
			hash := writeRandom(t, node, pv.Spec.CSI.VolumeHandle, 1<<20, 302)
			for _, other := range seedZoneNodes {
				if err := dataIntact(other, pv.Spec.CSI.VolumeHandle, hash)(ctxFor(t, time.Minute)); err != nil {
					t.Errorf("zone volume read through %s: %v", other, err)
				}
			}
		})
		g.wait()
	})
	assertInvariants(t)
}

// waitClaimBound waits for a claim without a pod to bind and returns its PV.
func waitClaimBound(t *testing.T, ns, name string) *corev1.PersistentVolume {
	t.Helper()
	ctx := ctxFor(t, 3*time.Minute)
	var pv *corev1.PersistentVolume
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || claim.Status.Phase != corev1.ClaimBound {
			return false, nil
		}
		pv, err = env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("claim %s/%s never bound: %v\nevents:\n%s", ns, name, err, claimEvents(ctx, ns, name))
	}
	return pv
}

// assertPlaced: the PV's affinity names value for key, and exactly nodes'
// drivers list its volume.
func assertPlaced(t *testing.T, pv *corev1.PersistentVolume, key, value string, nodes []string) {
	t.Helper()
	if got := affinityValue(pv, key); got != value {
		t.Errorf("PV %s affinity %s = %q, want %q", pv.Name, key, got, value)
	}
	if got := volumeNodes(t, pv.Spec.CSI.VolumeHandle); !sameSet(got, nodes) {
		t.Errorf("volume %s of PV %s is listed by %v, want %v", pv.Spec.CSI.VolumeHandle, pv.Name, got, nodes)
	}
}

// exactlyOneVolume: the drivers list no volume made for the PV's CSI name
// other than the PV's own.
func exactlyOneVolume(t *testing.T, ctx context.Context, pv *corev1.PersistentVolume) error {
	ids := volumesNamed(t, ctx, pv.Name)
	if len(ids) != 1 || ids[0] != pv.Spec.CSI.VolumeHandle {
		return fmt.Errorf("volumes made for %s: %v (the PV holds %s)", pv.Name, ids, pv.Spec.CSI.VolumeHandle)
	}
	return nil
}

// volumesNamed lists the IDs of backend volumes created under the CSI name
// (the provisioner names a claim's volume after its PV, pvc-<uid>). It
// relies on the driver's documented ID shape (driver/store/ids.go): IDs end
// in a hash of the CSI name, so that retries find earlier attempts; the
// same name in two pools gives two IDs with that ending.
func volumesNamed(t *testing.T, ctx context.Context, name string) []string {
	t.Helper()
	sum := sha256.Sum256([]byte(name))
	suffix := "-" + hex.EncodeToString(sum[:8])
	seen := map[string]bool{}
	var ids []string
	for _, node := range env.Workers() {
		resp, err := env.Nodes[node].Controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
		if err != nil {
			t.Fatalf("ListVolumes on %s: %v", node, err)
		}
		for _, entry := range resp.GetEntries() {
			id := entry.GetVolume().GetVolumeId()
			if strings.HasSuffix(id, suffix) && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	return ids
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[string]bool{}
	for _, x := range a {
		set[x] = true
	}
	for _, x := range b {
		if !set[x] {
			return false
		}
	}
	return true
}

// TestCrossNamespaceSnapshotReferences: a tenant in namespace B names
// namespace A's VolumeSnapshotContents in its own snapshots: the one cut for
// A's snapshot, and a pre-provisioned one whose volumeSnapshotRef names a
// snapshot of A by the same name as B's. Neither may bind in B, no restore
// in B may get A's data, and deleting B's snapshots must leave A's contents
// and data alone. A, meanwhile, uses both.
func TestCrossNamespaceSnapshotReferences(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, 8*time.Minute)
	nsA, nsB := adversarialNamespace(t), adversarialNamespace(t)
	createClass(t, "e2e-node", "node")
	ensureSnapshotClass(t)

	pv, node, hash := writtenSource(t, nsA, "src", "e2e-node", 400)
	cut(t, nsA, "a-snap", "src", pv)
	contentA := waitSnapshotReady(t, nsA, "a-snap")

	// A's own restore is the yardstick for how long a restore takes here.
	begin := time.Now()
	createClaim(t, nsA, "a-restore", "e2e-node", "16Mi", snapshotSource("a-snap"))
	createPod(t, nsA, "a-reader", "a-restore")
	waitBound(t, nsA, "a-restore", "a-reader")
	window := max(15*time.Second, 3*time.Since(begin))

	// An administrator imports a backend snapshot of A's volume for A.
	imported, err := env.Nodes[node].Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		SourceVolumeId: pv.Spec.CSI.VolumeHandle, Name: "import-" + nsA})
	if err != nil {
		t.Fatal(err)
	}
	env.Data.Cut(nsA, "imported", pv.Spec.CSI.VolumeHandle)
	importName := "import-" + nsA
	content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: importName},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: harness.DriverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			VolumeSnapshotClassName: ptr.To("e2e-snapclass"),
			Source:                  snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(imported.GetSnapshot().GetSnapshotId())},
			VolumeSnapshotRef:       corev1.ObjectReference{Kind: "VolumeSnapshot", APIVersion: snapv1.SchemeGroupVersion.String(), Namespace: nsA, Name: "imported"}}}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, content, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after a failure, do not leave the import to later tests
		ctx := ctxFor(t, time.Minute)
		_ = env.Snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, importName, metav1.DeleteOptions{})
		_, _ = env.Nodes[node].Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: imported.GetSnapshot().GetSnapshotId()})
	})

	// B reaches for both contents, and restores from what it reached.
	createSnapshot(t, nsB, "steal", "", contentA)
	createSnapshot(t, nsB, "imported", "", importName)
	createClaim(t, nsB, "stolen", "e2e-node", "16Mi", snapshotSource("steal"))
	createPod(t, nsB, "thief", "stolen")
	createClaim(t, nsB, "stolen-import", "e2e-node", "16Mi", snapshotSource("imported"))
	createPod(t, nsB, "thief-import", "stolen-import")
	holdsFor(t, window, "namespace "+nsB+" must not get namespace "+nsA+"'s snapshots", func(ctx context.Context) error {
		for _, name := range []string{"steal", "imported"} {
			snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(nsB).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if snap.Status != nil && (ptr.Deref(snap.Status.ReadyToUse, false) || ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "") != "") {
				return fmt.Errorf("VolumeSnapshot %s/%s bound: %s", nsB, name, describeSnapshotStatus(snap))
			}
		}
		for _, name := range []string{"stolen", "stolen-import"} {
			claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(nsB).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if claim.Spec.VolumeName != "" {
				return fmt.Errorf("claim %s/%s restoring another namespace's content got PV %s", nsB, name, claim.Spec.VolumeName)
			}
		}
		for name, want := range map[string]string{contentA: "a-snap", importName: "imported"} {
			got, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if ref := got.Spec.VolumeSnapshotRef; ref.Namespace != nsA || ref.Name != want {
				return fmt.Errorf("VolumeSnapshotContent %s now refers to %s/%s", name, ref.Namespace, ref.Name)
			}
		}
		return nil
	})

	// A can use the imported content.
	createSnapshot(t, nsA, "imported", "", importName)
	waitSnapshotReady(t, nsA, "imported")
	createClaim(t, nsA, "from-import", "e2e-node", "16Mi", snapshotSource("imported"))
	createPod(t, nsA, "import-reader", "from-import")
	restored, restoredNode := waitBound(t, nsA, "from-import", "import-reader")
	if err := dataIntact(restoredNode, restored.Spec.CSI.VolumeHandle, hash)(ctx); err != nil {
		t.Errorf("restore of the imported snapshot in %s: %v", nsA, err)
	}

	// B gives up: deleting its snapshots must not delete A's contents.
	for _, name := range []string{"stolen", "stolen-import"} {
		deletePod(t, nsB, map[string]string{"stolen": "thief", "stolen-import": "thief-import"}[name])
		deleteClaim(t, nsB, name)
	}
	for _, name := range []string{"steal", "imported"} {
		deleteAndWaitGone(t, "VolumeSnapshot "+nsB+"/"+name, func(ctx context.Context) error {
			return env.Snaps.SnapshotV1().VolumeSnapshots(nsB).Delete(ctx, name, metav1.DeleteOptions{})
		}, getSnapshot(nsB, name), 90*time.Second)
	}
	for _, name := range []string{"a-snap", "imported"} {
		snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(nsA).Get(ctx, name, metav1.GetOptions{})
		if err != nil || snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) {
			t.Errorf("namespace %s's snapshot %s after %s deleted its own: %v %s", nsA, name, nsB, err, describeSnapshotStatus(snap))
		}
	}
	assertInvariants(t)

	// A cleans up: the import goes with its snapshot (Delete policy).
	deleteSnapshotAndWait(t, nsA, "imported")
	if nodes := snapshotNodes(t, imported.GetSnapshot().GetSnapshotId()); len(nodes) > 0 {
		t.Errorf("imported backend snapshot still on %v after its Delete-policy content went", nodes)
	}
}

// TestClaimDeletedWhileProvisioning deletes claims at spread moments after
// the scheduler picked their node: while their volume is being created, or
// restored from a large snapshot. Whatever the moment, the claim goes, no PV
// is left for it, and no backend volume made for it survives; the
// snapshot's source protection goes too, so the snapshot can be deleted.
func TestClaimDeletedWhileProvisioning(t *testing.T) {
	needEnv(t)
	ns := adversarialNamespace(t)
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone", "zone", cluster.SeedZone)
	// A zone source: zone pools copy restores file by file, which takes a
	// while for 96 MiB; node pools may clone in constant time.
	source, sourceNode := func() (*corev1.PersistentVolume, string) {
		createClaim(t, ns, "big", "e2e-zone", "128Mi", nil)
		createPod(t, ns, "big-pod", "big")
		return waitBound(t, ns, "big", "big-pod")
	}()
	writeRandom(t, sourceNode, source.Spec.CSI.VolumeHandle, 96<<20, 500)
	cut(t, ns, "big-snap", "big", source)
	waitSnapshotReady(t, ns, "big-snap")

	t.Run("claims", func(t *testing.T) {
		g := &group{t: t}
		for i := range 10 {
			class := []string{"e2e-node", "e2e-zone"}[i%2]
			var dataSource *corev1.TypedLocalObjectReference
			kind := "new"
			if i >= 6 {
				class, dataSource, kind = "e2e-zone", snapshotSource("big-snap"), "restore"
			}
			delay := time.Duration(i%4) * 150 * time.Millisecond
			name := fmt.Sprintf("%s-%d", kind, i)
			g.run(name, func(t *testing.T) {
				size := "16Mi"
				if dataSource != nil {
					size = "128Mi"
				}
				createClaim(t, ns, name, class, size, dataSource)
				createPod(t, ns, name+"-pod", name)
				claim := waitSelectedNode(t, ns, name)
				timer := time.NewTimer(delay) // the moment of the deletion, not synchronisation
				<-timer.C
				pvName := provisioner.PVName(claim)
				_, pvErr := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctxFor(t, time.Minute), pvName, metav1.GetOptions{})
				t.Logf("deleting claim %s/%s %v after its node was selected; its PV existed then: %v", ns, name, delay, pvErr == nil)
				deleteClaim(t, ns, name)
				deletePod(t, ns, name+"-pod")
				waitGone(t, "claim "+ns+"/"+name, getClaim(ns, name), 90*time.Second)
				waitGone(t, "PV "+pvName, getPV(pvName), 90*time.Second)
				ctx := ctxFor(t, time.Minute)
				if err := poll(ctx, 500*time.Millisecond, 45*time.Second, func() (bool, error) {
					return len(volumesNamed(t, ctx, pvName)) == 0, nil
				}); err != nil {
					t.Errorf("volume made for deleted claim %s/%s survives: %v", ns, name, volumesNamed(t, ctx, pvName))
				}
			})
		}
		g.wait()
	})
	deleteSnapshotAndWait(t, ns, "big-snap")
	assertInvariants(t)
}

// waitSelectedNode waits until the scheduler picked a node for the claim,
// the moment its provisioning starts.
func waitSelectedNode(t *testing.T, ns, name string) *corev1.PersistentVolumeClaim {
	t.Helper()
	ctx := ctxFor(t, 2*time.Minute)
	var claim *corev1.PersistentVolumeClaim
	if err := poll(ctx, 20*time.Millisecond, time.Minute, func() (bool, error) {
		got, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		claim = got
		return got.Annotations[provisioner.AnnSelectedNode] != "", nil
	}); err != nil {
		t.Fatalf("no node selected for claim %s/%s: %v\nevents:\n%s", ns, name, err, claimEvents(ctx, ns, name))
	}
	return claim
}
