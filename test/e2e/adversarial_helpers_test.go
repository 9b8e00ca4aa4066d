package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// secondZoneTaint keeps the seed's single-zone tests off the second zone's
// worker (cluster.SecondZoneWorker); the multi-zone cases tolerate it.
const secondZoneTaint = "toposnap.io/e2e-second-zone"

// settleBound is how long a case's objects get to reach their final state
// once the case is done acting, before the invariants are judged.
const settleBound = 90 * time.Second

var (
	checkerOnce sync.Once
	checker     *harness.Checker
)

// invariants is the checker shared by the adversarial cases: one checker, so
// that the times backend objects were first seen unreferenced carry over.
func invariants() *harness.Checker {
	checkerOnce.Do(func() { checker = env.NewChecker(harness.CheckOptions{}) })
	return checker
}

// assertInvariants waits for the cluster to settle and fails the test with
// every invariant violation. Backend volumes and snapshots it reports as
// leaked are then deleted, so that one case's leak is not blamed on the
// cases and tests that follow.
func assertInvariants(t *testing.T) {
	t.Helper()
	ctx := ctxFor(t, settleBound+2*time.Minute)
	report := invariants().Settle(ctx, settleBound)
	if report.Waited > 5*time.Second && len(report.Violations) == 0 {
		t.Logf("the cluster took %v to settle; last waiting for:\n%s", report.Waited.Round(time.Second), strings.Join(report.WaitedFor, "\n"))
	}
	for _, violation := range report.Violations {
		t.Errorf("invariant violated: %s", violation)
	}
	if len(report.Violations) > 0 {
		removeLeaks(t, ctx)
	}
}

// removeLeaks deletes the backend volumes no PV references and the backend
// snapshots no content references, through the drivers that list them.
func removeLeaks(t *testing.T, ctx context.Context) {
	t.Helper()
	world, err := invariants().Observe(ctx)
	if err != nil {
		t.Logf("cannot remove leaks: %v", err)
		return
	}
	volumes, handles := map[string]bool{}, map[string]bool{}
	for _, pv := range world.PVs {
		if pv.Spec.CSI != nil {
			volumes[pv.Spec.CSI.VolumeHandle] = true
		}
	}
	for _, content := range world.Contents {
		if content.Status != nil && content.Status.SnapshotHandle != nil {
			handles[*content.Status.SnapshotHandle] = true
		}
		if content.Spec.Source.SnapshotHandle != nil {
			handles[*content.Spec.Source.SnapshotHandle] = true
		}
	}
	for id, nodes := range world.BackendSnapshots {
		if !handles[id] {
			_, err := env.Nodes[nodes[0]].Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
			t.Logf("removed leaked snapshot %s from %s: %v", id, nodes[0], err)
		}
	}
	for id, nodes := range world.Volumes {
		if !volumes[id] {
			_, err := env.Nodes[nodes[0]].Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			t.Logf("removed leaked volume %s from %s: %v", id, nodes[0], err)
		}
	}
}

// adversarialNamespace is createNamespace for a case that may leave its
// objects half deleted when it fails: at the end of the test its pods,
// claims and snapshots are deleted and their PVs awaited, so that what
// this case broke is not reported again by the tests that follow.
func adversarialNamespace(t *testing.T) string {
	t.Helper()
	ns := createNamespace(t)
	t.Cleanup(func() {
		ctx := ctxFor(t, 3*time.Minute)
		client := env.Cluster.Client
		_ = client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}, metav1.ListOptions{})
		_ = client.CoreV1().PersistentVolumeClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = env.Snaps.SnapshotV1().VolumeSnapshots(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		err := poll(ctx, 500*time.Millisecond, time.Minute, func() (bool, error) {
			pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, pv := range pvs.Items {
				if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == ns {
					return false, nil
				}
			}
			snaps, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(snaps.Items) == 0, nil
		})
		if err != nil {
			t.Logf("cleanup of namespace %s incomplete (%v): removing what holds it, as an administrator would", ns, err)
			forceCleanup(t, ctx, ns)
		}
	})
	return ns
}

// forceCleanup strips the finalizers of the namespace's deleted claims and
// snapshots and of their deleted PVs and contents, then deletes the backend
// objects left without an API object. A failed case has been reported; this
// keeps what it left stuck from failing every case after it.
func forceCleanup(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	strip := []byte(`{"metadata":{"finalizers":null}}`)
	client, snaps := env.Cluster.Client, env.Snaps.SnapshotV1()
	if claims, err := client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, claim := range claims.Items {
			_, err := client.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, claim.Name, types.MergePatchType, strip, metav1.PatchOptions{})
			t.Logf("stripped the finalizers of claim %s/%s: %v", ns, claim.Name, err)
		}
	}
	if list, err := snaps.VolumeSnapshots(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, snap := range list.Items {
			_, err := snaps.VolumeSnapshots(ns).Patch(ctx, snap.Name, types.MergePatchType, strip, metav1.PatchOptions{})
			t.Logf("stripped the finalizers of VolumeSnapshot %s/%s: %v", ns, snap.Name, err)
		}
	}
	if pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{}); err == nil {
		for _, pv := range pvs.Items {
			if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == ns {
				_ = client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
				_, err := client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, strip, metav1.PatchOptions{})
				t.Logf("deleted PV %s without its finalizers: %v", pv.Name, err)
			}
		}
	}
	if contents, err := snaps.VolumeSnapshotContents().List(ctx, metav1.ListOptions{}); err == nil {
		for _, content := range contents.Items {
			if content.Spec.VolumeSnapshotRef.Namespace == ns {
				_ = snaps.VolumeSnapshotContents().Delete(ctx, content.Name, metav1.DeleteOptions{})
				_, err := snaps.VolumeSnapshotContents().Patch(ctx, content.Name, types.MergePatchType, strip, metav1.PatchOptions{})
				t.Logf("deleted VolumeSnapshotContent %s without its finalizers: %v", content.Name, err)
			}
		}
	}
	removeLeaks(t, ctx)
}

// group runs subtests concurrently, all at once. Unlike t.Parallel it is
// not limited to -parallel (GOMAXPROCS) subtests at a time: these subtests
// spend their time waiting on the cluster, not computing.
type group struct {
	t  *testing.T
	wg sync.WaitGroup
}

func (g *group) run(name string, f func(t *testing.T)) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.t.Run(name, f)
	}()
}

// wait returns once every subtest has.
func (g *group) wait() { g.wg.Wait() }

// createImmediateClass is createClass with Immediate binding.
func createImmediateClass(t *testing.T, name, scope string, allowedZones ...string) {
	t.Helper()
	class := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: name},
		Provisioner:       harness.DriverName,
		Parameters:        map[string]string{"scope": scope},
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingImmediate),
	}
	if len(allowedZones) > 0 {
		class.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: topology.ZoneKey, Values: allowedZones}}}}
	}
	if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctxFor(t, time.Minute), class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// createPodIn is createPod for a pod that may run in the second zone:
// it tolerates secondZoneTaint and, with nodeSelector, is pinned.
func createPodIn(t *testing.T, ns, name, claim string, nodeSelector map[string]string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector: nodeSelector,
			Tolerations:  []corev1.Toleration{{Key: secondZoneTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
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

// snapshotSource is a claim dataSource naming a VolumeSnapshot.
func snapshotSource(name string) *corev1.TypedLocalObjectReference {
	return &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: name}
}

// ensureSnapshotClass creates snapshotOf's default class if missing.
func ensureSnapshotClass(t *testing.T) {
	t.Helper()
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-snapclass",
		Annotations: map[string]string{"snapshot.storage.kubernetes.io/is-default-class": "true"}},
		Driver: harness.DriverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctxFor(t, time.Minute), class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// createSnapshot creates a VolumeSnapshot without waiting for it: of a
// claim, or (claim "") of the pre-provisioned content.
func createSnapshot(t *testing.T, ns, name, claim, content string) {
	t.Helper()
	ensureSnapshotClass(t)
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if claim != "" {
		snap.Spec.Source.PersistentVolumeClaimName = ptr.To(claim)
	} else {
		snap.Spec.Source.VolumeSnapshotContentName = ptr.To(content)
	}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctxFor(t, time.Minute), snap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitSnapshotReady waits until the snapshot is ready and returns its content's name.
func waitSnapshotReady(t *testing.T, ns, name string) string {
	t.Helper()
	ctx := ctxFor(t, 3*time.Minute)
	var content string
	var last *snapv1.VolumeSnapshot
	if err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		got, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = got
		if got.Status == nil || !ptr.Deref(got.Status.ReadyToUse, false) {
			return false, nil
		}
		content = ptr.Deref(got.Status.BoundVolumeSnapshotContentName, "")
		return true, nil
	}); err != nil {
		t.Fatalf("VolumeSnapshot %s/%s never became ready: %v; last status: %s", ns, name, err, describeSnapshotStatus(last))
	}
	return content
}

func describeSnapshotStatus(snap *snapv1.VolumeSnapshot) string {
	if snap == nil || snap.Status == nil {
		return "none"
	}
	s := snap.Status
	msg := ""
	if s.Error != nil {
		msg = ptr.Deref(s.Error.Message, "")
	}
	return fmt.Sprintf("content=%q ready=%v error=%q", ptr.Deref(s.BoundVolumeSnapshotContentName, ""), ptr.Deref(s.ReadyToUse, false), msg)
}

// deleteAndWaitGone deletes an object through del and waits until get says
// NotFound, failing with what still holds it.
func deleteAndWaitGone(t *testing.T, what string, del func(context.Context) error, get func(context.Context) (metav1.Object, error), within time.Duration) {
	t.Helper()
	ctx := ctxFor(t, within+time.Minute)
	if err := del(ctx); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete %s: %v", what, err)
	}
	waitGone(t, what, get, within)
}

// waitGone waits until get says NotFound.
func waitGone(t *testing.T, what string, get func(context.Context) (metav1.Object, error), within time.Duration) {
	t.Helper()
	ctx := ctxFor(t, within+time.Minute)
	var last metav1.Object
	if err := poll(ctx, 200*time.Millisecond, within, func() (bool, error) {
		obj, err := get(ctx)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err == nil {
			last = obj
		}
		return false, nil
	}); err != nil {
		finalizers := []string{}
		if last != nil {
			finalizers = last.GetFinalizers()
		}
		t.Fatalf("%s still exists after %v (finalizers %v): %v", what, within, finalizers, err)
	}
}

func getClaim(ns, name string) func(context.Context) (metav1.Object, error) {
	return func(ctx context.Context) (metav1.Object, error) {
		return env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	}
}

func getPV(name string) func(context.Context) (metav1.Object, error) {
	return func(ctx context.Context) (metav1.Object, error) {
		return env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	}
}

func getSnapshot(ns, name string) func(context.Context) (metav1.Object, error) {
	return func(ctx context.Context) (metav1.Object, error) {
		return env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	}
}

func getContent(name string) func(context.Context) (metav1.Object, error) {
	return func(ctx context.Context) (metav1.Object, error) {
		return env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
	}
}

func deletePod(t *testing.T, ns, name string) {
	t.Helper()
	err := env.Cluster.Client.CoreV1().Pods(ns).Delete(ctxFor(t, time.Minute), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func deleteClaim(t *testing.T, ns, name string) {
	t.Helper()
	err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Delete(ctxFor(t, time.Minute), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func deleteSnapshot(t *testing.T, ns, name string) {
	t.Helper()
	err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctxFor(t, time.Minute), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// writeRandom writes size seeded-random bytes to the volume through node
// and returns the hash the ledger recorded.
func writeRandom(t *testing.T, node, volumeID string, size int, seed uint64) string {
	t.Helper()
	data := make([]byte, size)
	random := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(data); i += 8 {
		v := random.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	hash, err := env.WriteData(ctxFor(t, 2*time.Minute), node, volumeID, data)
	if err != nil {
		t.Fatal(err)
	}
	return hash
}

// holdsFor checks cond repeatedly for d and fails the test as soon as it is
// false. It observes that something does NOT happen (data wiped, a foreign
// content bound), which can only be watched for a while: d is several times
// what the wrong outcome takes when the defect is present.
func holdsFor(t *testing.T, d time.Duration, what string, cond func(context.Context) error) {
	t.Helper()
	ctx := ctxFor(t, d+time.Minute)
	deadline := time.Now().Add(d)
	for {
		if err := cond(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// dataIntact: the volume is still listed by node's driver and hashes to want.
func dataIntact(node, volumeID, want string) func(context.Context) error {
	return func(ctx context.Context) error {
		got, err := env.HashVolume(ctx, node, volumeID)
		if err != nil {
			return fmt.Errorf("volume %s unreadable: %w", volumeID, err)
		}
		if got != want {
			return fmt.Errorf("volume %s hashes to %.12s, want %.12s", volumeID, got, want)
		}
		return nil
	}
}

// volumeNodes lists which workers' drivers list the volume.
func volumeNodes(t *testing.T, volumeID string) []string {
	t.Helper()
	var nodes []string
	for _, name := range env.Workers() {
		resp, err := env.Nodes[name].Controller.ListVolumes(ctxFor(t, time.Minute), &csi.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, entry := range resp.GetEntries() {
			if entry.GetVolume().GetVolumeId() == volumeID {
				nodes = append(nodes, name)
			}
		}
	}
	return nodes
}

// claimEvents returns a claim's events as "Reason: message" lines.
func claimEvents(ctx context.Context, ns, name string) string {
	events, err := env.Cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, e := range events.Items {
		lines = append(lines, e.Reason+": "+e.Message)
	}
	return strings.Join(lines, "\n")
}

// inSecondZone selects the second zone's worker.
var inSecondZone = map[string]string{topology.ZoneKey: cluster.SecondZone}
