package provisioner

import (
	"context"
	"slices"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/claimsource"
	"github.com/toposnap/toposnap/internal/fakecsi"
)

// otherDriver is another CSI driver of the same cluster. Its provisioner
// puts upstream's protection finalizers, the very names toposnap uses, on
// its own snapshots and claims while it restores or clones from them.
const otherDriver = "other.csi.example.com"

// TestSourceFinalizerOwnership: toposnap removes a source's protection
// finalizer only from a source of its own driver that no toposnap claim
// reads; another driver's source, or one whose driver is not known yet,
// is never written to, whatever reads it. The cases of toposnap's own
// sources are the controls: the same sync does remove their finalizer.
func TestSourceFinalizerOwnership(t *testing.T) {
	cases := []struct {
		name    string
		objects []runtimeObject // the source and whatever reads it
		source  claimsource.Source
		keep    bool
	}{
		{"another driver's snapshot that its pending restore reads", append(otherSnapshot("snap"),
			restoreFrom(claimObject(ns, "restore", "other", ""), "snap")),
			snapshotSource("snap"), true},
		{"another driver's snapshot that nothing reads", otherSnapshot("snap"),
			snapshotSource("snap"), true},
		{"another driver's claim that its pending clone reads", append(otherClaim("src"),
			cloneOf(claimObject(ns, "clone", "other", ""), "src")),
			claimSource("src"), true},
		{"another driver's claim that nothing reads", otherClaim("src"),
			claimSource("src"), true},
		{"a snapshot not bound to a content yet", []runtimeObject{protectedSnapshot(ns, "snap")},
			snapshotSource("snap"), true},
		{"a snapshot naming toposnap's content of another snapshot", misboundSnapshot("snap"),
			snapshotSource("snap"), true},
		{"an unbound claim", []runtimeObject{protectedClaim(claimObject(ns, "src", "local", ""))},
			claimSource("src"), true},
		{"control: toposnap's snapshot that nothing reads", ownSnapshot("snap"),
			snapshotSource("snap"), false},
		{"control: toposnap's claim that nothing reads", ownClaim("src"),
			claimSource("src"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := fakecsi.Start(t)
			w := newWorld(t, append([]runtimeObject{nodeObject("node1", "b"), classObject("local", "node", wffc), otherClass()}, tc.objects...)...)
			n := w.startNode("node1", "b", server, client, false)
			w.Kube.ClearActions()
			w.Snaps.ClearActions()
			if err := n.syncSource(sourceKey(tc.source)); err != nil {
				t.Fatal(err)
			}
			finalizers := w.sourceFinalizers(tc.source)
			kept := slices.Contains(finalizers, FinalizerRestoreSource) || slices.Contains(finalizers, FinalizerSnapshotAsSource) ||
				slices.Contains(finalizers, FinalizerCloneSource)
			switch {
			case tc.keep && !kept:
				t.Fatalf("%s lost its protection finalizer: toposnap removed a finalizer it did not put there (finalizers now %v)", tc.source, finalizers)
			case !tc.keep && kept:
				t.Fatalf("%s, toposnap's own and read by nothing, kept its protection finalizer: %v", tc.source, finalizers)
			}
			if tc.keep {
				if writes := sourceWrites(w, tc.source); len(writes) != 0 {
					t.Fatalf("%s was written to: %v", tc.source, writes)
				}
			}
		})
	}
}

// TestNoProtectionOnForeignSources: a toposnap claim naming another
// driver's snapshot or claim is refused before any finalizer is added.
func TestNoProtectionOnForeignSources(t *testing.T) {
	cases := []struct {
		name    string
		objects []runtimeObject
		source  claimsource.Source
	}{
		{"restore of another driver's snapshot", append(unprotected(otherSnapshot("snap")),
			restoreFrom(claimObject(ns, "data", "local", "node1"), "snap")), snapshotSource("snap")},
		{"clone of another driver's claim", append(unprotected(otherClaim("src")),
			cloneOf(claimObject(ns, "data", "local", "node1"), "src")), claimSource("src")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := fakecsi.Start(t)
			w := newWorld(t, append([]runtimeObject{nodeObject("node1", "b"), classObject("local", "node", wffc), otherClass()}, tc.objects...)...)
			n := w.startNode("node1", "b", server, client, false)
			if err := n.syncClaim(ns, "data"); err == nil {
				t.Fatal("provisioned from another driver's source")
			}
			if finalizers := w.sourceFinalizers(tc.source); len(finalizers) != 0 {
				t.Fatalf("%s was given finalizers %v", tc.source, finalizers)
			}
		})
	}
}

// Sources of a world.

func claimSource(name string) claimsource.Source {
	return claimsource.Source{Kind: claimsource.KindClaim, Namespace: ns, Name: name}
}

func otherClass() *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Provisioner: otherDriver,
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingImmediate)}
}

func cloneOf(claim *corev1.PersistentVolumeClaim, source string) *corev1.PersistentVolumeClaim {
	claim.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: claimsource.KindClaim, Name: source}
	return claim
}

func protectedSnapshot(namespace, name string) *snapv1.VolumeSnapshot {
	return &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: "uid-snap-unbound",
		Finalizers: []string{FinalizerRestoreSource}},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("somewhere")}}}
}

func protectedClaim(claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
	claim.Finalizers = append(claim.Finalizers, FinalizerCloneSource)
	return claim
}

// ownSnapshot is toposnap's ready snapshot, protected.
func ownSnapshot(name string) []runtimeObject {
	snap, content := readySnapshot(ns, name, "snap-handle", "node1")
	snap.Finalizers = []string{FinalizerRestoreSource}
	return []runtimeObject{snap, content}
}

// otherSnapshot is the other driver's ready snapshot, protected.
func otherSnapshot(name string) []runtimeObject {
	snap, content := readySnapshot(ns, name, "other-handle", "node1")
	snap.Finalizers = []string{FinalizerSnapshotAsSource}
	content.Spec.Driver = otherDriver
	content.Annotations = nil
	return []runtimeObject{snap, content}
}

// misboundSnapshot names a toposnap content that is bound to another snapshot.
func misboundSnapshot(name string) []runtimeObject {
	objects := ownSnapshot(name)
	objects[1].(*snapv1.VolumeSnapshotContent).Spec.VolumeSnapshotRef.UID = "uid-of-another-snapshot"
	return objects
}

// ownClaim is a toposnap claim bound to its PV, protected.
func ownClaim(name string) []runtimeObject {
	claim := protectedClaim(claimObject(ns, name, "local", "node1"))
	claim.Spec.VolumeName = PVName(claim)
	claim.Status.Phase = corev1.ClaimBound
	return []runtimeObject{claim, provisionedPV(claim, "vol-"+name, "node1", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete)}
}

// otherClaim is the other driver's claim bound to its PV, protected.
func otherClaim(name string) []runtimeObject {
	claim := protectedClaim(claimObject(ns, name, "other", ""))
	claim.Spec.VolumeName = "pv-other-" + name
	claim.Status.Phase = corev1.ClaimBound
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: claim.Spec.VolumeName},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              "other",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: name, UID: claim.UID},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: otherDriver, VolumeHandle: "other-" + name}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound}}
	return []runtimeObject{claim, pv}
}

// unprotected strips the protection finalizers off a source's objects.
func unprotected(objects []runtimeObject) []runtimeObject {
	for _, obj := range objects {
		if o, ok := obj.(metav1.Object); ok {
			o.SetFinalizers(nil)
		}
	}
	return objects
}

// Reading the world.

func (w *world) sourceFinalizers(source claimsource.Source) []string {
	w.t.Helper()
	if source.IsSnapshot() {
		return w.snapshotFinalizers(source.Namespace, source.Name)
	}
	claim := w.claim(source.Namespace, source.Name)
	if claim == nil {
		w.t.Fatalf("%s is gone", source)
	}
	return claim.Finalizers
}

// sourceWrites lists the writes made to the source's object since the
// actions were last cleared.
func sourceWrites(w *world, source claimsource.Source) []string {
	actions, resource := w.Kube.Actions(), "persistentvolumeclaims"
	if source.IsSnapshot() {
		actions, resource = w.Snaps.Actions(), "volumesnapshots"
	}
	var writes []string
	for _, action := range actions {
		if action.GetVerb() != "get" && action.GetVerb() != "list" && action.GetVerb() != "watch" &&
			action.GetResource().Resource == resource && action.GetNamespace() == source.Namespace {
			writes = append(writes, action.GetVerb()+" "+action.GetResource().Resource)
		}
	}
	return writes
}

// TestUpstreamSnapshotControllerFinalizerIsLeftAlone: upstream's
// snapshot-controller (the chart's default) puts
// volumesnapshot-as-source-protection on every live VolumeSnapshot, toposnap's
// included, and puts it back whenever it is removed. toposnap protects the
// sources of its restores with a finalizer of its own, so it never removes
// upstream's from a live snapshot: removing it started an endless war of
// updates. Upstream's is removed only from a toposnap snapshot being
// deleted that no unbound claim names (upstream's own rule, for snapshots
// an earlier toposnap protected under that name); the controls show the
// sync does act on toposnap's own finalizer.
func TestUpstreamSnapshotControllerFinalizerIsLeftAlone(t *testing.T) {
	deleting := func(objects []runtimeObject) []runtimeObject {
		objects[0].(*snapv1.VolumeSnapshot).DeletionTimestamp = ptr.To(metav1.Now())
		return objects
	}
	with := func(objects []runtimeObject, finalizers ...string) []runtimeObject {
		objects[0].(*snapv1.VolumeSnapshot).Finalizers = finalizers
		return objects
	}
	cases := []struct {
		name    string
		objects []runtimeObject
		want    []string
	}{
		{"live snapshot, upstream's finalizer: kept", with(ownSnapshot("snap"), FinalizerSnapshotAsSource),
			[]string{FinalizerSnapshotAsSource}},
		{"live snapshot, both, nothing reads it: only toposnap's goes", with(ownSnapshot("snap"), FinalizerSnapshotAsSource, FinalizerRestoreSource),
			[]string{FinalizerSnapshotAsSource}},
		{"live snapshot a restore reads: both kept", append(with(ownSnapshot("snap"), FinalizerSnapshotAsSource, FinalizerRestoreSource),
			provisioning(restoreFrom(claimObject(ns, "restore", "local", "node1"), "snap"))),
			[]string{FinalizerSnapshotAsSource, FinalizerRestoreSource}},
		{"deleted snapshot nothing names: upstream's goes too", deleting(with(ownSnapshot("snap"), FinalizerSnapshotAsSource)),
			[]string{}},
		{"deleted snapshot an unstarted restore names: upstream's kept", append(deleting(with(ownSnapshot("snap"), FinalizerSnapshotAsSource)),
			restoreFrom(claimObject(ns, "restore", "local", "node1"), "snap")),
			[]string{FinalizerSnapshotAsSource}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := fakecsi.Start(t)
			w := newWorld(t, append([]runtimeObject{nodeObject("node1", "b"), classObject("local", "node", wffc)}, tc.objects...)...)
			n := w.startNode("node1", "b", server, client, false)
			if err := n.syncSource(sourceKey(snapshotSource("snap"))); err != nil {
				t.Fatal(err)
			}
			// A deleted snapshot whose last finalizer went is gone, as the API
			// server does it: no finalizers.
			var got []string
			snap, err := w.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(context.Background(), "snap", metav1.GetOptions{})
			switch {
			case err == nil:
				got = snap.Finalizers
			case !apierrors.IsNotFound(err):
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) && (len(got) != 0 || len(tc.want) != 0) {
				t.Fatalf("finalizers after the sync = %v, want %v", got, tc.want)
			}
		})
	}
}

// provisioning marks a claim as one whose volume is being made.
func provisioning(claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
	claim.Finalizers = append(claim.Finalizers, FinalizerProvisioning)
	return claim
}
