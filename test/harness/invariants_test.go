package harness

import (
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

var now = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func pv(name, handle string, phase corev1.PersistentVolumePhase, claim *corev1.PersistentVolumeClaim) corev1.PersistentVolume {
	out := corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: DriverName, VolumeHandle: handle}}},
		Status: corev1.PersistentVolumeStatus{Phase: phase}}
	if claim != nil {
		out.Spec.ClaimRef = &corev1.ObjectReference{Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID}
	}
	return out
}

func claim(ns, name, volume string) corev1.PersistentVolumeClaim {
	out := corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: volume}}
	if volume != "" {
		out.Status.Phase = corev1.ClaimBound
	} else {
		out.Status.Phase = corev1.ClaimPending
	}
	return out
}

func deleted(ago time.Duration) *metav1.Time { return ptr.To(metav1.NewTime(now.Add(-ago))) }

func snapshot(ns, name, content string) snapv1.VolumeSnapshot {
	out := snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)}}
	if content != "" {
		out.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To(content)}
	}
	return out
}

func content(name, handle string, of *snapv1.VolumeSnapshot) snapv1.VolumeSnapshotContent {
	out := snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: DriverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: of.Namespace, Name: of.Name, UID: of.UID}}}
	if handle != "" {
		out.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(handle)}
	}
	return out
}

func podUsing(ns, claimName string) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-" + claimName},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

// TestEvaluate: each invariant as a world that keeps it and one that breaks
// it; want lists substrings of the expected violations, pending of the
// expected pending states.
func TestEvaluate(t *testing.T) {
	bound := claim("a", "data", "pv-1")
	boundPV := pv("pv-1", "vol-1", corev1.VolumeBound, &bound)
	deletedBoundPV := boundPV
	deletedBoundPV.DeletionTimestamp = deleted(5 * time.Minute)
	deletedBoundPV.Finalizers = []string{"kubernetes.io/pv-protection"}
	released := pv("pv-2", "vol-2", corev1.VolumeReleased, ptr.To(claim("a", "gone", "")))
	retained := pv("pv-3", "vol-3", corev1.VolumeReleased, ptr.To(claim("a", "kept", "")))
	retained.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	deletedClaim := claim("a", "data", "pv-1")
	deletedClaim.DeletionTimestamp = deleted(5 * time.Minute)
	deletedClaim.Finalizers = []string{"kubernetes.io/pvc-protection"}
	snap := snapshot("a", "snap", "content-1")
	otherNS := snapshot("b", "snap", "content-1")
	cut := content("content-1", "snap-1", &snap)
	deletedSnap := snapshot("a", "snap", "content-1")
	deletedSnap.DeletionTimestamp = deleted(2 * time.Minute)
	deletedSnap.Finalizers = []string{"snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"}
	restore := claim("a", "restore", "")
	restore.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "snap"}
	deletedContent := cut
	deletedContent.DeletionTimestamp = deleted(10 * time.Second)
	recreated := snapshot("a", "snap", "")
	recreated.UID = "uid-snap-again"
	unboundImport := content("import", "", &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "later"}})
	unboundImport.Spec.Source.SnapshotHandle = ptr.To("snap-8")
	strangerPV := pv("pv-9", "vol-9", corev1.VolumeBound, ptr.To(claim("a", "someone-else", "pv-9")))

	tests := []struct {
		name    string
		world   World
		seen    time.Duration // how long unreferenced backend objects have been seen so
		want    []string
		pending []string
	}{
		{name: "bound PV with its volume is clean",
			world: World{PVs: []corev1.PersistentVolume{boundPV}, Claims: []corev1.PersistentVolumeClaim{bound}, Volumes: map[string][]string{"vol-1": {"node1"}}}},
		{name: "bound PV without its volume is data loss",
			world: World{PVs: []corev1.PersistentVolume{boundPV}, Claims: []corev1.PersistentVolumeClaim{bound}},
			want:  []string{"PV pv-1 is bound to claim a/data", "backend volume vol-1 is gone"}},
		{name: "deleted PV still bound to its claim must keep its volume",
			world: World{PVs: []corev1.PersistentVolume{deletedBoundPV}, Claims: []corev1.PersistentVolumeClaim{bound}},
			want:  []string{"PV pv-1 is bound to claim a/data (claim phase Bound, PV phase Bound, deleted) but its backend volume vol-1 is gone"}},
		{name: "deleted PV held by its bound claim is not lingering",
			world: World{PVs: []corev1.PersistentVolume{deletedBoundPV}, Claims: []corev1.PersistentVolumeClaim{bound}, Volumes: map[string][]string{"vol-1": {"node1"}}}},
		{name: "released PV without volume is being reclaimed",
			world:   World{PVs: []corev1.PersistentVolume{released}},
			pending: []string{"PV pv-2 (phase Released) has no backend volume vol-2: being reclaimed"}},
		{name: "unclaimed PV without volume is a violation",
			world: World{PVs: []corev1.PersistentVolume{pv("pv-4", "vol-4", corev1.VolumeAvailable, nil)}},
			want:  []string{"PV pv-4 (phase Available, unclaimed) has no backend volume vol-4"}},
		{name: "new unreferenced volume is pending",
			world:   World{Volumes: map[string][]string{"vol-5": {"node1", "node2"}}},
			pending: []string{"backend volume vol-5 on node1,node2 has no PV (yet)"}},
		{name: "unreferenced volume past grace is a leak",
			world: World{Volumes: map[string][]string{"vol-5": {"node3"}}}, seen: time.Minute,
			want: []string{"backend volume vol-5 on node3 has no PV (unreferenced for 1m0s)"}},
		{name: "PV bound to a claim that names another is a misbinding",
			world: World{PVs: []corev1.PersistentVolume{strangerPV}, Claims: []corev1.PersistentVolumeClaim{claim("a", "thief", "pv-9")},
				Volumes: map[string][]string{"vol-9": {"node1"}}},
			want: []string{"claim a/thief is bound to PV pv-9, whose claimRef is a/someone-else"}},
		{name: "deleted claim used by a pod is held",
			world: World{PVs: []corev1.PersistentVolume{boundPV}, Claims: []corev1.PersistentVolumeClaim{deletedClaim}, Pods: []corev1.Pod{podUsing("a", "data")},
				Volumes: map[string][]string{"vol-1": {"node1"}}}},
		{name: "deleted claim no pod uses keeps its finalizer too long",
			world: World{PVs: []corev1.PersistentVolume{boundPV}, Claims: []corev1.PersistentVolumeClaim{deletedClaim}, Volumes: map[string][]string{"vol-1": {"node1"}}},
			want:  []string{"claim a/data deleted 5m0s ago still has finalizers [kubernetes.io/pvc-protection]"}},
		{name: "content with its backend snapshot is clean",
			world: World{Snapshots: []snapv1.VolumeSnapshot{snap}, Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}}},
		{name: "content without its backend snapshot is a violation",
			world: World{Snapshots: []snapv1.VolumeSnapshot{snap}, Contents: []snapv1.VolumeSnapshotContent{cut}},
			want:  []string{"VolumeSnapshotContent content-1 (snapshot a/snap) has no backend snapshot snap-1"}},
		{name: "deleted content without its backend snapshot is being deleted",
			world:   World{Contents: []snapv1.VolumeSnapshotContent{deletedContent}},
			pending: []string{"being deleted", "VolumeSnapshotContent content-1 deleted 10s ago still has finalizers"}},
		{name: "backend snapshot without content past grace is a leak",
			world: World{BackendSnapshots: map[string][]string{"snap-7": {"node2"}}}, seen: time.Minute,
			want: []string{"backend snapshot snap-7 on node2 has no VolumeSnapshotContent"}},
		{name: "snapshot bound to another namespace's content is a misbinding",
			world: World{Snapshots: []snapv1.VolumeSnapshot{snap, otherNS}, Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}},
			want:  []string{"VolumeSnapshot b/snap is bound to VolumeSnapshotContent content-1, whose volumeSnapshotRef is a/snap"}},
		{name: "snapshot bound to a vanished content lost its data",
			world: World{Snapshots: []snapv1.VolumeSnapshot{snap}},
			want:  []string{"VolumeSnapshot a/snap is bound to VolumeSnapshotContent content-1, which does not exist"}},
		{name: "content whose snapshot is gone is deleted soon",
			world:   World{Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}},
			pending: []string{"VolumeSnapshotContent content-1 (deletionPolicy Delete, finalizers []) outlives its VolumeSnapshot a/snap (uid uid-snap) and is not deleted (yet)"}},
		{name: "content outliving its snapshot past grace is a leak",
			world: World{Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}}, seen: time.Minute,
			want: []string{"VolumeSnapshotContent content-1 (deletionPolicy Delete, finalizers []) outlives its VolumeSnapshot a/snap"}},
		{name: "content of a snapshot recreated under the same name is orphaned",
			world: World{Snapshots: []snapv1.VolumeSnapshot{recreated}, Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}}, seen: time.Minute,
			want: []string{"outlives its VolumeSnapshot a/snap (uid uid-snap)"}},
		{name: "unbound pre-provisioned content waits for its snapshot",
			world: World{Contents: []snapv1.VolumeSnapshotContent{unboundImport}, BackendSnapshots: map[string][]string{"snap-8": {"node1"}}}, seen: time.Minute},
		{name: "deleted snapshot held by a restore in progress",
			world: World{Snapshots: []snapv1.VolumeSnapshot{deletedSnap}, Claims: []corev1.PersistentVolumeClaim{restore},
				Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}}},
		{name: "deleted snapshot nothing holds lingers",
			world: World{Snapshots: []snapv1.VolumeSnapshot{deletedSnap}, Contents: []snapv1.VolumeSnapshotContent{cut}, BackendSnapshots: map[string][]string{"snap-1": {"node1"}}},
			want:  []string{"VolumeSnapshot a/snap deleted 2m0s ago still has finalizers [snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checker := (&Env{}).NewChecker(CheckOptions{})
			world := tt.world
			if tt.seen > 0 {
				world.At = now.Add(-tt.seen)
				checker.Evaluate(&world)
			}
			world.At = now
			got := checker.Evaluate(&world)
			assertLines(t, "violations", got.Violations, tt.want)
			assertLines(t, "pending", got.Pending, tt.pending)
		})
	}
}

// assertLines: every want is a substring of its own line of got, and got
// has no other line.
func assertLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	matched := make([]bool, len(got))
	for _, w := range want {
		found := false
		for i, line := range got {
			if strings.Contains(line, w) {
				matched[i], found = true, true
			}
		}
		if !found {
			t.Errorf("%s %q: none mentions %q", what, got, w)
		}
	}
	for i, line := range got {
		if !matched[i] {
			t.Errorf("unexpected %s line %q", what, line)
		}
	}
}

// TestRetainedVolumeIsNotALeak: once the checker saw a Retain PV, its
// volume outliving the PV is the operator's, not a leak.
func TestRetainedVolumeIsNotALeak(t *testing.T) {
	checker := (&Env{}).NewChecker(CheckOptions{})
	kept := pv("pv-3", "vol-3", corev1.VolumeReleased, ptr.To(claim("a", "kept", "")))
	kept.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	checker.Evaluate(&World{At: now.Add(-time.Hour), PVs: []corev1.PersistentVolume{kept}, Volumes: map[string][]string{"vol-3": {"node1"}}})
	got := checker.Evaluate(&World{At: now, Volumes: map[string][]string{"vol-3": {"node1"}}})
	if !got.Clean() {
		t.Fatalf("retained volume reported: %+v", got)
	}
}

// TestReorphanedVolumeGetsAFreshGrace: a volume referenced again, then
// unreferenced, is timed from the second time.
func TestReorphanedVolumeGetsAFreshGrace(t *testing.T) {
	checker := (&Env{}).NewChecker(CheckOptions{Grace: 10 * time.Second})
	bound := claim("a", "data", "pv-1")
	volumes := map[string][]string{"vol-1": {"node1"}}
	checker.Evaluate(&World{At: now.Add(-time.Minute), Volumes: volumes})
	checker.Evaluate(&World{At: now.Add(-30 * time.Second), Volumes: volumes, Claims: []corev1.PersistentVolumeClaim{bound},
		PVs: []corev1.PersistentVolume{pv("pv-1", "vol-1", corev1.VolumeBound, &bound)}})
	checker.Evaluate(&World{At: now.Add(-5 * time.Second), Volumes: volumes})
	if got := checker.Evaluate(&World{At: now, Volumes: volumes}); len(got.Violations) != 0 || len(got.Pending) != 1 {
		t.Fatalf("got %+v, want the volume pending (5s of a 10s grace)", got)
	}
}

// TestDataExpectations: written volumes must hold what was written;
// restores of a recorded cut what the source held then; others are not
// hashed.
func TestDataExpectations(t *testing.T) {
	ledger := NewLedger()
	ledger.Wrote("vol-src", "hash-1")
	if !ledger.Cut("a", "snap", "vol-src") {
		t.Fatal("cut of a written volume not recorded")
	}
	ledger.Wrote("vol-src", "hash-2") // written after the cut: restores still want hash-1
	if ledger.Cut("a", "blind", "vol-unknown") {
		t.Fatal("cut of an unknown volume recorded")
	}
	src := claim("a", "src", "pv-src")
	restore := claim("a", "restore", "pv-restore")
	restore.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "snap"}
	blind := claim("a", "blind-restore", "pv-blind")
	blind.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "blind"}
	world := &World{
		Claims: []corev1.PersistentVolumeClaim{src, restore, blind},
		PVs: []corev1.PersistentVolume{pv("pv-src", "vol-src", corev1.VolumeBound, &src), pv("pv-restore", "vol-restore", corev1.VolumeBound, &restore),
			pv("pv-blind", "vol-blind", corev1.VolumeBound, &blind), pv("pv-gone", "vol-gone", corev1.VolumeBound, &src)},
		Volumes: map[string][]string{"vol-src": {"node1"}, "vol-restore": {"node2"}, "vol-blind": {"node1"}},
	}
	got := map[string]string{}
	for _, e := range dataExpectations(world, indexWorld(world), ledger) {
		got[e.pv] = e.node + " " + e.hash
	}
	want := map[string]string{"pv-src": "node1 hash-2", "pv-restore": "node2 hash-1"}
	if len(got) != len(want) || got["pv-src"] != want["pv-src"] || got["pv-restore"] != want["pv-restore"] {
		t.Fatalf("expectations %v, want %v", got, want)
	}
}
