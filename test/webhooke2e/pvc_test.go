package webhooke2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/webhook"
)

// cacheGrace bounds how long the webhook's informers may take to see
// objects a test has just created or updated.
const cacheGrace = 20 * time.Second

func TestRestoreAndCloneAdmission(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, 3*time.Minute)
	ns := createNamespace(t, nil)
	zoneB, zoneDClass := "e2e-restore-zone-b", "e2e-restore-zone-d"
	createStorageClass(t, withWaitForFirstConsumer(storageClass(zoneB, webhook.DriverName, cluster.SeedZone)))
	createStorageClass(t, withWaitForFirstConsumer(storageClass(zoneDClass, webhook.DriverName, zoneD)))
	inZoneB := []topology.Segment{{topology.ZoneKey: cluster.SeedZone}}
	createSnapshot(t, ctx, ns, "ready", webhook.DriverName, "2Gi", inZoneB, true)
	createSnapshot(t, ctx, ns, "foreign", otherCSI, "1Gi", nil, true)
	createSnapshot(t, ctx, ns, "pending", webhook.DriverName, "1Gi", inZoneB, false)
	if _, err := env.cluster.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, newClaim(ns, "source", zoneB, "5Gi"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create source claim: %v", err)
	}
	const group = snapv1.GroupName

	rejected := []struct {
		name  string
		claim *corev1.PersistentVolumeClaim
		want  []string
	}{
		{"wrong apiGroup", restoreClaim(ns, "wrong-group", zoneB, "2Gi", "storage.k8s.io", "ready"),
			[]string{`apiGroup "storage.k8s.io": set apiGroup to snapshot.storage.k8s.io`}},
		{"missing snapshot", restoreClaim(ns, "missing", zoneB, "2Gi", group, "no-such-snapshot"),
			[]string{fmt.Sprintf("VolumeSnapshot %s/no-such-snapshot not found", ns)}},
		{"size below restoreSize", restoreClaim(ns, "too-small", zoneB, "1Gi", group, "ready"),
			[]string{fmt.Sprintf("the claim requests 1Gi, less than VolumeSnapshot %s/ready's restoreSize 2Gi: request at least 2Gi", ns)}},
		{"snapshot of another driver", restoreClaim(ns, "foreign", zoneB, "1Gi", group, "foreign"),
			[]string{"taken by driver " + otherCSI, "provisions with " + webhook.DriverName}},
		{"class allowedTopologies not reaching the snapshot", restoreClaim(ns, "unreachable", zoneDClass, "2Gi", group, "ready"),
			[]string{fmt.Sprintf("StorageClass %s allows [zone %s] but VolumeSnapshot %s/ready can only be restored in [{%s=%s}]",
				zoneDClass, zoneD, ns, topology.ZoneKey, cluster.SeedZone)}},
		{"clone of a missing claim", cloneClaim(ns, "clone-missing", zoneB, "5Gi", "no-such-claim"),
			[]string{fmt.Sprintf("PersistentVolumeClaim %s/no-such-claim to clone not found", ns)}},
		{"clone smaller than its source", cloneClaim(ns, "clone-small", zoneB, "1Gi", "source"),
			[]string{fmt.Sprintf("less than PersistentVolumeClaim %s/source's request 5Gi: request at least 5Gi", ns)}},
	}
	for _, tt := range rejected {
		t.Run(tt.name+" is rejected by kubectl apply", func(t *testing.T) {
			expectRejected(t, ctx, tt.claim, tt.want...)
		})
	}

	t.Run("restore of a ready snapshot the class reaches is admitted", func(t *testing.T) {
		good := restoreClaim(ns, "good", zoneB, "2Gi", group, "ready")
		waitAdmittedWithoutWarnings(t, ctx, good)
		if err := kubectlApply(t, ctx, good); err != nil {
			t.Fatalf("kubectl apply: %v", err)
		}
		if _, err := env.cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "good", metav1.GetOptions{}); err != nil {
			t.Fatalf("admitted claim not stored: %v", err)
		}
	})
	t.Run("clone as large as its source is admitted", func(t *testing.T) {
		if err := kubectlApply(t, ctx, cloneClaim(ns, "clone-good", zoneB, "5Gi", "source")); err != nil {
			t.Fatalf("kubectl apply: %v", err)
		}
	})
	t.Run("restore of a snapshot not ready yet is admitted with a warning", func(t *testing.T) {
		c := newClients(t)
		claim := restoreClaim(ns, "early", zoneB, "1Gi", group, "pending")
		if _, err := c.kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create: %v", err)
		}
		want := fmt.Sprintf("VolumeSnapshot %s/pending is not ready to use yet", ns)
		if warnings := c.warnings.take(); len(warnings) != 1 || !strings.Contains(warnings[0], want) {
			t.Fatalf("warnings %q, want one containing %q", warnings, want)
		}
	})
}

// expectRejected applies claim with kubectl and expects the webhook to
// reject it with a message containing wants. It first waits, with
// server-side dry runs, until the webhook's caches have caught up with the
// objects the test just made (a dry run stores nothing), so that the real
// apply is decided on the state the test set up.
func expectRejected(t *testing.T, ctx context.Context, claim *corev1.PersistentVolumeClaim, wants ...string) {
	t.Helper()
	var last error
	err := poll(ctx, 200*time.Millisecond, cacheGrace, func() (bool, error) {
		last = kubectlApply(t, ctx, claim, "--dry-run=server")
		return last != nil && containsAll(last.Error(), wants...), nil
	})
	if err != nil {
		t.Fatalf("dry run never rejected with %q; last: %v", wants, last)
	}
	err = kubectlApply(t, ctx, claim)
	if err == nil {
		t.Fatalf("kubectl apply admitted the claim, want rejected with %q", wants)
	}
	if !containsAll(err.Error(), append([]string{"denied the request"}, wants...)...) {
		t.Fatalf("kubectl apply: %v\nwant the webhook's denial with %q", err, wants)
	}
	_, err = env.cluster.Client.CoreV1().PersistentVolumeClaims(claim.Namespace).Get(ctx, claim.Name, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("rejected claim exists (get: %v)", err)
	}
}

// waitAdmittedWithoutWarnings waits, with dry runs, until the webhook
// admits claim with no warning: its caches hold the snapshot's status.
func waitAdmittedWithoutWarnings(t *testing.T, ctx context.Context, claim *corev1.PersistentVolumeClaim) {
	t.Helper()
	c := newClients(t)
	var last string
	err := poll(ctx, 200*time.Millisecond, cacheGrace, func() (bool, error) {
		_, err := c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Create(ctx, claim,
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		warnings := c.warnings.take()
		last = fmt.Sprintf("err %v, warnings %q", err, warnings)
		return err == nil && len(warnings) == 0, nil
	})
	if err != nil {
		t.Fatalf("dry run never admitted without warnings; last: %s", last)
	}
}

func withWaitForFirstConsumer(class *storagev1.StorageClass) *storagev1.StorageClass {
	class.VolumeBindingMode = ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)
	return class
}

// createSnapshot creates a pre-provisioned VolumeSnapshotContent of driver
// restorable in segments (nil: no annotation) and the VolumeSnapshot name
// bound to it; when ready, both statuses say ready with restoreSize, as a
// snapshot controller would set them. No controller runs: the objects
// stay as created. The content is deleted after the test.
func createSnapshot(t *testing.T, ctx context.Context, namespace, name, driver, restoreSize string, segments []topology.Segment, ready bool) {
	t.Helper()
	size := resource.MustParse(restoreSize)
	content := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-" + namespace + "-" + name},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver:            driver,
			DeletionPolicy:    snapv1.VolumeSnapshotContentRetain,
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To("handle-" + name)},
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: namespace, Name: name},
		},
	}
	if segments != nil {
		value, err := topology.EncodeSegments(segments)
		if err != nil {
			t.Fatal(err)
		}
		content.Annotations = map[string]string{topology.AnnAccessibleTopology: value}
	}
	contents := env.snapshots.SnapshotV1().VolumeSnapshotContents()
	created, err := contents.Create(ctx, content, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create VolumeSnapshotContent: %v", err)
	}
	t.Cleanup(func() { _ = contents.Delete(context.Background(), content.Name, metav1.DeleteOptions{}) })
	if ready {
		created.Status = &snapv1.VolumeSnapshotContentStatus{
			SnapshotHandle: ptr.To("handle-" + name), ReadyToUse: ptr.To(true), RestoreSize: ptr.To(size.Value()),
		}
		if _, err := contents.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update VolumeSnapshotContent status: %v", err)
		}
	}
	snapshots := env.snapshots.SnapshotV1().VolumeSnapshots(namespace)
	snapshot, err := snapshots.Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: ptr.To(content.Name)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create VolumeSnapshot: %v", err)
	}
	if ready {
		snapshot.Status = &snapv1.VolumeSnapshotStatus{
			BoundVolumeSnapshotContentName: ptr.To(content.Name), ReadyToUse: ptr.To(true), RestoreSize: &size,
		}
		if _, err := snapshots.UpdateStatus(ctx, snapshot, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update VolumeSnapshot status: %v", err)
		}
	}
}
