package provisioner

import (
	"context"
	"fmt"

	"slices"
	"strconv"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/topology"
)

const ns = "tenant"

var wffc, immediate = storagev1.VolumeBindingWaitForFirstConsumer, storagev1.VolumeBindingImmediate

// provisionedPV is a PV this driver made for claim on node, in phase.
func provisionedPV(claim *corev1.PersistentVolumeClaim, handle, node string, phase corev1.PersistentVolumePhase, policy corev1.PersistentVolumeReclaimPolicy) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: PVName(claim), Annotations: map[string]string{AnnProvisionedBy: driver}, Finalizers: []string{FinalizerVolume}},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: policy,
			ClaimRef:                      &corev1.ObjectReference{Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: handle}},
			NodeAffinity:                  NodeAffinity(nil),
		},
		Status: corev1.PersistentVolumeStatus{Phase: phase},
	}
	pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.NodeKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}}
	return pv
}

// TestReclaim: only a Released PV's volume is deleted. A Bound PV that an
// operator deletes (`kubectl delete pv`) keeps its data while its pod
// runs; a Retain or Failed PV is left alone.
func TestReclaim(t *testing.T) {
	cases := []struct {
		name        string
		phase       corev1.PersistentVolumePhase
		policy      corev1.PersistentVolumeReclaimPolicy
		deleted     bool
		wantDeleted bool
	}{
		{"released Delete PV is reclaimed", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete, false, true},
		{"released Delete PV being deleted is reclaimed", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete, true, true},
		{"bound PV deleted by an operator keeps its data", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete, true, false},
		{"bound PV keeps its data", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete, false, false},
		{"failed PV waits for a human", corev1.VolumeFailed, corev1.PersistentVolumeReclaimDelete, true, false},
		{"released Retain PV keeps its data", corev1.VolumeReleased, corev1.PersistentVolumeReclaimRetain, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			claim := claimObject(ns, "data", "local", "node1")
			server, client := fakecsi.Start(t)
			handle := server.AddVolume(PVName(claim), map[string]string{topology.NodeKey: "node1"})
			w := newWorld(t, nodeObject("node1", "b"), provisionedPV(claim, handle, "node1", tc.phase, tc.policy))
			if tc.deleted {
				if err := w.Kube.CoreV1().PersistentVolumes().Delete(context.Background(), PVName(claim), metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			n := w.startNode("node1", "b", server, client, false)
			if err := n.syncVolume(PVName(claim)); err != nil {
				t.Fatal(err)
			}
			if gone := len(server.VolumeIDs()) == 0; gone != tc.wantDeleted {
				t.Fatalf("volume deleted = %v, want %v (calls %v)", gone, tc.wantDeleted, server.Calls())
			}
		})
	}
}

// TestImmediateZoneClaimIsProvisionedOnce: with nodes in two zones, each
// zone's Lease holder sees an immediate zone claim its class allows; one
// volume is made, not one per zone.
func TestImmediateZoneClaimIsProvisionedOnce(t *testing.T) {
	w := newWorld(t, nodeObject("b1", "b"), nodeObject("c1", "c"), classObject("shared", "zone", immediate), claimObject(ns, "data", "shared", ""))
	serverB, clientB := fakecsi.Start(t)
	serverC, clientC := fakecsi.Start(t)
	zoneB := w.startNode("b1", "b", serverB, clientB, true)
	zoneC := w.startNode("c1", "c", serverC, clientC, true)
	// Both look at the same version of the claim, as two processes would.
	for _, n := range []*node{zoneB, zoneC} {
		if err := n.ctrl.syncClaim(context.Background(), ns+"/data"); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		for _, n := range []*node{zoneB, zoneC} {
			if err := n.syncClaim(ns, "data"); err != nil {
				t.Fatal(err)
			}
		}
	}
	volumes := len(serverB.VolumeIDs()) + len(serverC.VolumeIDs())
	if volumes != 1 || len(w.pvs()) != 1 {
		t.Fatalf("zone b made %d volumes, zone c %d, PVs %d; want one volume and one PV in all", len(serverB.VolumeIDs()), len(serverC.VolumeIDs()), len(w.pvs()))
	}
	if claim := w.claim(ns, "data"); hasFinalizer(claim, FinalizerProvisioning) {
		t.Errorf("claim kept %s after its PV was made", FinalizerProvisioning)
	}
}

// TestDelayedZoneClaimIsTheZonesToMake: a WaitForFirstConsumer zone claim
// whose pod went to a node running no provisioner of its own (b2) is made
// by the Lease holder of that node's zone, once; the other zone's holder and
// a zone member without the Lease leave it alone.
func TestDelayedZoneClaimIsTheZonesToMake(t *testing.T) {
	w := newWorld(t, nodeObject("b1", "b"), nodeObject("b2", "b"), nodeObject("b3", "b"), nodeObject("c1", "c"),
		classObject("zonal", "zone", wffc), claimObject(ns, "data", "zonal", "b2"))
	serverB, clientB := fakecsi.Start(t)
	serverB3, clientB3 := fakecsi.Start(t)
	serverC, clientC := fakecsi.Start(t)
	holderB := w.startNode("b1", "b", serverB, clientB, true)
	memberB := w.startNode("b3", "b", serverB3, clientB3, false)
	holderC := w.startNode("c1", "c", serverC, clientC, true)
	for range 3 {
		for _, n := range []*node{holderC, memberB, holderB} {
			if err := n.syncClaim(ns, "data"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := [3]int{len(serverB.VolumeIDs()), len(serverB3.VolumeIDs()), len(serverC.VolumeIDs())}; got != [3]int{1, 0, 0} || len(w.pvs()) != 1 {
		t.Fatalf("volumes made by b1 (zone b's holder), b3, c1 = %v, PVs %d; want [1 0 0] and one PV", got, len(w.pvs()))
	}
	if zone := w.claim(ns, "data").Annotations[AnnProvisioningZone]; zone != "r/b" {
		t.Errorf("claim's %s = %q, want r/b", AnnProvisioningZone, zone)
	}
}

// TestDuplicateVolumeIsDeleted: a PV of the claim's name that holds
// another volume means the new one is a duplicate, deleted rather than
// leaked behind a swallowed AlreadyExists.
func TestDuplicateVolumeIsDeleted(t *testing.T) {
	claim := claimObject(ns, "data", "local", "node1")
	other := provisionedPV(claim, "vol-elsewhere", "node1", corev1.VolumeAvailable, corev1.PersistentVolumeReclaimDelete)
	w := newWorld(t, nodeObject("node1", "b"), classObject("local", "node", wffc), claim)
	server, client := fakecsi.Start(t)
	n := w.startNode("node1", "b", server, client, false)
	n.refresh()
	// The PV appears after this node's cache last saw the claim unprovisioned.
	w.create(other)
	if err := n.ctrl.provision(context.Background(), w.claim(ns, "data"), classObject("local", "node", wffc)); err != nil {
		t.Fatal(err)
	}
	if ids := server.VolumeIDs(); len(ids) != 0 {
		t.Fatalf("duplicate volumes left: %v", ids)
	}
}

// TestClaimDeletedDuringProvisioning: whatever step a claim is deleted at,
// and even if the provisioner restarts meanwhile, its volume ends deleted,
// no finalizer stays on the claim or its source, and nothing else is lost.
func TestClaimDeletedDuringProvisioning(t *testing.T) {
	timeout := status.Error(codes.DeadlineExceeded, "timed out")
	cases := []struct {
		name string
		// fault makes the first provisioning attempt stop part-way.
		fault    func(server *fakecsi.Server, w *world)
		restore  bool
		restarts bool
	}{
		{"timeout after the driver made the volume", func(s *fakecsi.Server, _ *world) {
			s.Fail("CreateVolume", fakecsi.Fault{Err: timeout, After: true})
		}, false, false},
		{"timeout after the driver made the volume, then a restart", func(s *fakecsi.Server, _ *world) {
			s.Fail("CreateVolume", fakecsi.Fault{Err: timeout, After: true})
		}, false, true},
		{"PV create failed after the volume was made, then a restart", func(_ *fakecsi.Server, w *world) {
			failPVCreateOnce(w)
		}, false, true},
		{"restore timed out, then a restart", func(s *fakecsi.Server, _ *world) {
			s.Fail("CreateVolume", fakecsi.Fault{Err: timeout, After: true})
		}, true, true},
		{"restore failed for good", func(s *fakecsi.Server, _ *world) {
			s.Fail("CreateVolume", fakecsi.Fault{Err: status.Error(codes.InvalidArgument, "bad")}, fakecsi.Fault{Err: status.Error(codes.InvalidArgument, "bad")})
		}, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := fakecsi.Start(t)
			claim := claimObject(ns, "data", "local", "node1")
			objects := []runtimeObject{nodeObject("node1", "b"), classObject("local", "node", wffc)}
			if tc.restore {
				snap, content := readySnapshot(ns, "snap", server.AddSnapshot("s", "vol-src", map[string]string{topology.NodeKey: "node1"}), "node1")
				objects = append(objects, snap, content)
				claim = restoreFrom(claim, "snap")
			}
			w := newWorld(t, append(objects, claim)...)
			tc.fault(server, w)
			n := w.startNode("node1", "b", server, client, false)
			if err := n.syncClaim(ns, "data"); err == nil {
				t.Fatal("the first attempt was meant to fail")
			}
			if !hasFinalizer(w.claim(ns, "data"), FinalizerProvisioning) {
				t.Fatalf("claim has no %s while its volume may exist", FinalizerProvisioning)
			}
			w.deleteClaim(ns, "data")
			if tc.restarts {
				n = w.startNode("node1", "b", server, client, false)
			}
			for range 3 {
				if err := n.syncClaim(ns, "data"); err != nil {
					t.Fatal(err)
				}
			}
			if claim := w.claim(ns, "data"); claim != nil {
				t.Fatalf("deleted claim still there with finalizers %v", claim.Finalizers)
			}
			if ids := server.VolumeIDs(); len(ids) != 0 {
				t.Fatalf("volumes leaked: %v", ids)
			}
			if len(w.pvs()) != 0 {
				t.Fatalf("PVs left: %v", w.pvs())
			}
			if tc.restore {
				if err := n.syncSource(sourceKey(snapshotSource("snap"))); err != nil {
					t.Fatal(err)
				}
				if f := w.snapshotFinalizers(ns, "snap"); slices.Contains(f, FinalizerRestoreSource) {
					t.Fatalf("snapshot kept %s after its only restore was deleted", FinalizerRestoreSource)
				}
				if len(server.SnapshotIDs()) != 1 {
					t.Fatalf("the snapshot was lost: %v", server.SnapshotIDs())
				}
			}
		})
	}
}

// TestSourceProtection: the snapshot a restore reads keeps its protection
// exactly while a volume is being made from it, across a restart; a
// pending restore that has not started does not hold it.
func TestSourceProtection(t *testing.T) {
	server, client := fakecsi.Start(t)
	snap, content := readySnapshot(ns, "snap", server.AddSnapshot("s", "vol-src", map[string]string{topology.NodeKey: "node1"}), "node1")
	w := newWorld(t, nodeObject("node1", "b"), classObject("local", "node", wffc), snap, content,
		restoreFrom(claimObject(ns, "a", "local", "node1"), "snap"), restoreFrom(claimObject(ns, "b", "local", "node1"), "snap"),
		restoreFrom(claimObject(ns, "unstarted", "local", ""), "snap"))
	n := w.startNode("node1", "b", server, client, false)
	if err := n.syncClaim(ns, "a"); err != nil {
		t.Fatal(err)
	}
	bind(t, w, ns, "a")
	server.Fail("CreateVolume", fakecsi.Fault{Err: status.Error(codes.DeadlineExceeded, "slow"), After: true})
	if err := n.syncClaim(ns, "b"); err == nil {
		t.Fatal("claim b's first attempt was meant to time out")
	}
	n = w.startNode("node1", "b", server, client, false) // a restart loses nothing the API holds
	if err := n.syncSource(sourceKey(snapshotSource("snap"))); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(w.snapshotFinalizers(ns, "snap"), FinalizerRestoreSource) {
		t.Fatal("protection removed while claim b's volume is still being made from the snapshot")
	}
	w.deleteClaim(ns, "b")
	for range 2 {
		if err := n.syncClaim(ns, "b"); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.syncSource(sourceKey(snapshotSource("snap"))); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(w.snapshotFinalizers(ns, "snap"), FinalizerRestoreSource) {
		t.Fatal("protection left while only an unstarted restore names the snapshot")
	}
}

// TestRestoreSourceChecks: a restore or clone reads only what its own
// namespace owns.
func TestRestoreSourceChecks(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(w *world, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim
	}{
		{"content bound to another namespace's snapshot", func(w *world, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
			snap, content := readySnapshot(ns, "snap", "snap-s", "node1")
			content.Spec.VolumeSnapshotRef = corev1.ObjectReference{Namespace: "victim", Name: "snap", UID: "uid-victim"}
			w.create(snap)
			w.create(content)
			return restoreFrom(claim, "snap")
		}},
		{"content bound to an earlier snapshot of the same name", func(w *world, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
			snap, content := readySnapshot(ns, "snap", "snap-s", "node1")
			content.Spec.VolumeSnapshotRef.UID = "uid-of-a-deleted-snapshot"
			w.create(snap)
			w.create(content)
			return restoreFrom(claim, "snap")
		}},
		{"clone of a claim whose PV is bound to another claim", func(w *world, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
			source := claimObject(ns, "source", "local", "node1")
			source.Spec.VolumeName = "pv-of-victim"
			victim := claimObject("victim", "data", "local", "node1")
			pv := provisionedPV(victim, "vol-victim", "node1", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete)
			pv.Name = "pv-of-victim"
			w.create(source)
			w.create(pv)
			claim.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "source"}
			return claim
		}},
		{"data source in another namespace", func(w *world, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
			snap, content := readySnapshot("victim", "snap", "snap-s", "node1")
			w.create(snap)
			w.create(content)
			claim.Spec.DataSourceRef = &corev1.TypedObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "snap", Namespace: ptr.To("victim")}
			return claim
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := fakecsi.Start(t)
			server.AddSnapshot("s", "vol-victim", map[string]string{topology.NodeKey: "node1"})
			w := newWorld(t, nodeObject("node1", "b"), classObject("local", "node", wffc))
			w.create(tc.mutate(w, claimObject(ns, "thief", "local", "node1")))
			n := w.startNode("node1", "b", server, client, false)
			if err := n.syncClaim(ns, "thief"); err == nil {
				t.Fatal("provisioned from a source the claim's namespace does not own")
			}
			if got := server.Count("CreateVolume"); got != 0 {
				t.Fatalf("CreateVolume called %d times", got)
			}
		})
	}
}

// TestRescheduleLetsGo: RESOURCE_EXHAUSTED means nothing was made: the
// claim loses its selected node and the finalizer, so the scheduler picks
// again and nothing holds the claim.
func TestRescheduleLetsGo(t *testing.T) {
	server, client := fakecsi.Start(t)
	server.Fail("CreateVolume", fakecsi.Fault{Err: status.Error(codes.ResourceExhausted, "pool full")})
	w := newWorld(t, nodeObject("node1", "b"), classObject("local", "node", wffc), claimObject(ns, "data", "local", "node1"))
	n := w.startNode("node1", "b", server, client, false)
	if err := n.syncClaim(ns, "data"); err != nil {
		t.Fatal(err)
	}
	claim := w.claim(ns, "data")
	if _, ok := claim.Annotations[AnnSelectedNode]; ok || hasFinalizer(claim, FinalizerProvisioning) {
		t.Fatalf("claim after RESOURCE_EXHAUSTED: annotations %v, finalizers %v", claim.Annotations, claim.Finalizers)
	}
}

// TestZoneGivesBackAnImmediateClaim: a zone out of space gives an
// Immediate zone claim back and counts the attempt, which is what moves the
// claim on to the next zone (toposnap-controller routes it by the count).
func TestZoneGivesBackAnImmediateClaim(t *testing.T) {
	server, client := fakecsi.Start(t)
	w := newWorld(t, nodeObject("b1", "b"), classObject("shared", "zone", immediate), claimObject(ns, "data", "shared", ""))
	holder := w.startNode("b1", "b", server, client, true)
	for attempt := 1; attempt <= 2; attempt++ {
		server.Fail("CreateVolume", fakecsi.Fault{Err: status.Error(codes.ResourceExhausted, "pool full")})
		for range 2 { // the zone takes the claim, then fails to make its volume
			if err := holder.syncClaim(ns, "data"); err != nil {
				t.Fatal(err)
			}
		}
		claim := w.claim(ns, "data")
		if _, ok := claim.Annotations[AnnProvisioningZone]; ok || hasFinalizer(claim, FinalizerProvisioning) {
			t.Fatalf("attempt %d: claim still held: annotations %v, finalizers %v", attempt, claim.Annotations, claim.Finalizers)
		}
		if got := claim.Annotations[AnnZoneAttempts]; got != strconv.Itoa(attempt) {
			t.Fatalf("after %d zones gave the claim back, %s = %q", attempt, AnnZoneAttempts, got)
		}
	}
}

// TestProvisionAndBind: the plain path ends with a PV pre-bound to the
// claim and no toposnap finalizer on the claim.
func TestProvisionAndBind(t *testing.T) {
	server, client := fakecsi.Start(t)
	w := newWorld(t, nodeObject("node1", "b"), classObject("local", "node", wffc), claimObject(ns, "data", "local", "node1"))
	n := w.startNode("node1", "b", server, client, false)
	for range 2 {
		if err := n.syncClaim(ns, "data"); err != nil {
			t.Fatal(err)
		}
	}
	pvs := w.pvs()
	if len(pvs) != 1 || pvs[0].Spec.ClaimRef.UID != types.UID("uid-"+ns+"-data") || !slices.Contains(pvs[0].Finalizers, FinalizerVolume) {
		t.Fatalf("PVs: %+v", pvs)
	}
	if hasFinalizer(w.claim(ns, "data"), FinalizerProvisioning) {
		t.Fatal("claim kept the provisioning finalizer")
	}
	if got := server.Count("CreateVolume"); got != 1 {
		t.Fatalf("CreateVolume called %d times, want 1", got)
	}
}

// TestOrphansDeletedOnlyWhenProvablyOrphans: with --delete-orphans, a
// volume no PV names goes only if this node saw its PV deleted (a watch
// event) while Released with reclaim policy Delete, and made for it: a
// reclaim whose finalizer was removed by hand. A PV turned Retain before
// it went (the "keep this volume" procedure), a PV gone from a relist (a
// tombstone: an etcd restored from an older backup), a PV forged around
// the volume's handle, a volume whose PV was never seen, and one the driver
// lists as still being made stay (reported).
func TestOrphansDeletedOnlyWhenProvablyOrphans(t *testing.T) {
	server, client := fakecsi.Start(t)
	here := map[string]string{topology.NodeKey: "node1"}
	pvOf := func(name string, policy corev1.PersistentVolumeReclaimPolicy) *corev1.PersistentVolume {
		claim := claimObject(ns, name, "local", "node1")
		return provisionedPV(claim, server.AddVolume(PVName(claim), here), "node1", corev1.VolumeReleased, policy)
	}
	released := pvOf("released", corev1.PersistentVolumeReclaimDelete)
	retained := pvOf("retained", corev1.PersistentVolumeReclaimRetain)
	relisted := pvOf("relisted", corev1.PersistentVolumeReclaimDelete)
	forged := provisionedPV(claimObject(ns, "forger", "local", "node1"), retained.Spec.CSI.VolumeHandle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
	filling := pvOf("filling", corev1.PersistentVolumeReclaimDelete)
	server.SetVolumeContext(filling.Spec.CSI.VolumeHandle, map[string]string{volumeStateKey: "creating"})
	neverSeen := server.AddVolume("never-seen", here)
	n := newWorld(t, nodeObject("node1", "b")).startNode("node1", "b", server, client, false)
	for _, pv := range []*corev1.PersistentVolume{released, retained, forged, filling} {
		n.ctrl.volumeDeleted(pv)
	}
	n.ctrl.volumeDeleted(cache.DeletedFinalStateUnknown{Key: relisted.Name, Obj: relisted})
	tracker := &orphanTracker{}
	for range 2 { // first seen, then past a grace of zero
		if err := n.ctrl.orphanRound(context.Background(), tracker, 0, true); err != nil {
			t.Fatal(err)
		}
	}
	ids := server.VolumeIDs()
	kept := []string{retained.Spec.CSI.VolumeHandle, relisted.Spec.CSI.VolumeHandle, filling.Spec.CSI.VolumeHandle, neverSeen}
	slices.Sort(ids)
	slices.Sort(kept)
	if !slices.Equal(ids, kept) {
		t.Fatalf("volumes left %v, want %v (and %s deleted)", ids, kept, released.Spec.CSI.VolumeHandle)
	}
}

// TestNewLeaseHolderLooksAgain: winning the zone's Lease brings back every
// claim and PV, so work the former holder left (a claimed immediate claim,
// a released zone volume) is not waiting for an event that never comes.
func TestNewLeaseHolderLooksAgain(t *testing.T) {
	server, client := fakecsi.Start(t)
	claim := claimObject(ns, "data", "shared", "")
	w := newWorld(t, nodeObject("b1", "b"), claim,
		provisionedPV(claimObject(ns, "gone", "shared", ""), "vol-gone", "b1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete))
	n := w.startNode("b1", "b", server, client, true)
	n.ctrl.requeueAll()
	if claims, volumes := n.ctrl.claimQueue.Len(), n.ctrl.volumeQueue.Len(); claims != 1 || volumes != 1 {
		t.Fatalf("queued %d claims and %d PVs, want 1 and 1", claims, volumes)
	}
}

// TestRolesSplitANodesVolumes: a routed node's two Controllers never act
// on the same volume: RoleNode on its node's, RoleZone (while the Lease is
// held) on its zone's, RoleAll on both; orphans likewise.
func TestRolesSplitANodesVolumes(t *testing.T) {
	nodePV := provisionedPV(claimObject(ns, "n", "local", "b1"), "n", "b1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
	zonePV := provisionedPV(claimObject(ns, "z", "shared", ""), "z", "b1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
	zonePV.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.ZoneKey, Operator: corev1.NodeSelectorOpIn, Values: []string{"b"}}}}}}}
	nodeSegments := []*csi.Topology{{Segments: map[string]string{topology.NodeKey: "b1"}}}
	zoneSegments := []*csi.Topology{{Segments: map[string]string{topology.ZoneKey: "b", topology.RegionKey: "r"}}}
	for _, tc := range []struct {
		role               Role
		holds              bool
		wantNode, wantZone bool
	}{
		{RoleAll, true, true, true},
		{RoleAll, false, true, false},
		{RoleNode, true, true, false},
		{RoleZone, true, false, true},
		{RoleZone, false, false, false},
	} {
		t.Run(fmt.Sprintf("%s/holds=%v", tc.role, tc.holds), func(t *testing.T) {
			server, client := fakecsi.Start(t)
			n := newWorld(t, nodeObject("b1", "b")).startNode("b1", "b", server, client, tc.holds)
			n.ctrl.role = tc.role
			if tc.role == RoleNode {
				n.ctrl.zone = neverHolds{}
			}
			got := [4]bool{n.ctrl.responsibleFor(nodePV), n.ctrl.responsibleFor(zonePV),
				n.ctrl.responsibleForSegments(nodeSegments), n.ctrl.responsibleForSegments(zoneSegments)}
			want := [4]bool{tc.wantNode, tc.wantZone, tc.wantNode, tc.wantZone}
			if got != want {
				t.Fatalf("responsible for node PV, zone PV, node volume, zone volume = %v, want %v", got, want)
			}
		})
	}
}
