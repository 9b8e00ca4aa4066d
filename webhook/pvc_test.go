package webhook

import (
	"context"
	"errors"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

// claimState is the cluster the claim tests decide against: the seed's
// nodes in zone b, classes in zone b and d, snapshots of each kind and
// claims to clone.
func claimState(t testing.TB) State {
	zoneBSegment := topology.Segment{topology.ZoneKey: zoneB}
	defaultClass := storageClass("default-d", DriverName, zoneD)
	defaultClass.Annotations = map[string]string{annDefaultStorageClass: "true"}
	pending := readySnapshot("pending", "", "1Gi")
	pending.Status = nil
	sizeInContent := readySnapshot("size-in-content", "content-size", "1Gi")
	sizeInContent.Status.RestoreSize = nil
	contentWithSize := snapshotContent("content-size", DriverName, zoneBSegment)
	contentWithSize.Status = &snapv1.VolumeSnapshotContentStatus{RestoreSize: ptr.To[int64](3 << 30)}
	badAnnotation := snapshotContent("content-bad", DriverName)
	badAnnotation.Annotations = map[string]string{topology.AnnAccessibleTopology: "zone b"}
	return newState(t, objects(seedNodes(),
		withMode(storageClass("toposnap", DriverName, zoneB), storagev1.VolumeBindingWaitForFirstConsumer),
		withMode(storageClass("toposnap-d", DriverName, zoneD), storagev1.VolumeBindingWaitForFirstConsumer),
		storageClass("anywhere", DriverName),
		storageClass("other", otherCSI),
		defaultClass,
		readySnapshot("ready", "content-ready", "2Gi"),
		snapshotContent("content-ready", DriverName, zoneBSegment),
		readySnapshot("foreign", "content-foreign", "1Gi"),
		snapshotContent("content-foreign", otherCSI),
		readySnapshot("far", "content-far", "1Gi"),
		snapshotContent("content-far", DriverName, topology.Segment{topology.ZoneKey: "cn-hangzhou-x"}),
		readySnapshot("unreadable", "content-bad", "1Gi"),
		badAnnotation,
		pending,
		sizeInContent,
		contentWithSize,
		claim("source", "toposnap", "5Gi"),
		claim("foreign-source", "other", "1Gi"),
		claim("orphan-source", "deleted-class", "1Gi"),
	)...)
}

func TestValidateClaim(t *testing.T) {
	withRef := claim("new", "toposnap", "2Gi")
	withRef.Spec.DataSourceRef = &corev1.TypedObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "missing"}
	populated := claim("new", "toposnap", "2Gi")
	populated.Spec.DataSourceRef = &corev1.TypedObjectReference{APIGroup: ptr.To("backup.example.com"), Kind: "Backup", Name: "nightly"}
	defaulted := restoring(claim("new", "", "2Gi"), snapv1.GroupName, "ready")
	defaulted.Spec.StorageClassName = nil

	tests := []struct {
		name        string
		claim       *corev1.PersistentVolumeClaim
		update      bool
		wantAllowed bool
		wantReasons []string // substrings of the denial message
		wantWarns   []string // substrings, one per warning
	}{
		{name: "restore of a ready snapshot the class can reach is admitted",
			claim: restoring(claim("new", "toposnap", "2Gi"), snapv1.GroupName, "ready"), wantAllowed: true},
		{name: "restore into a class without allowedTopologies is admitted",
			claim: restoring(claim("new", "anywhere", "2Gi"), snapv1.GroupName, "ready"), wantAllowed: true},
		{name: "wrong apiGroup is rejected",
			claim:       restoring(claim("new", "toposnap", "2Gi"), "storage.k8s.io", "ready"),
			wantReasons: []string{`apiGroup "storage.k8s.io": set apiGroup to snapshot.storage.k8s.io`}},
		{name: "missing snapshot is rejected",
			claim:       restoring(claim("new", "toposnap", "2Gi"), snapv1.GroupName, "missing"),
			wantReasons: []string{"VolumeSnapshot app/missing not found: create the VolumeSnapshot first"}},
		{name: "dataSourceRef is checked like dataSource",
			claim: withRef, wantReasons: []string{"VolumeSnapshot app/missing not found"}},
		{name: "size below the snapshot's restoreSize is rejected",
			claim:       restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "ready"),
			wantReasons: []string{"requests 1Gi, less than VolumeSnapshot app/ready's restoreSize 2Gi: request at least 2Gi"}},
		{name: "restoreSize is read from the content when the snapshot has none",
			claim:       restoring(claim("new", "toposnap", "2Gi"), snapv1.GroupName, "size-in-content"),
			wantReasons: []string{"request at least 3Gi"}},
		{name: "snapshot of another driver is rejected",
			claim:       restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "foreign"),
			wantReasons: []string{"taken by driver other.csi.example.com (VolumeSnapshotContent content-foreign) but StorageClass toposnap provisions with csi.toposnap.io"}},
		{name: "class whose allowedTopologies cannot reach the snapshot is rejected",
			claim: restoring(claim("new", "toposnap-d", "2Gi"), snapv1.GroupName, "ready"),
			wantReasons: []string{"StorageClass toposnap-d allows [zone cn-hangzhou-d] but VolumeSnapshot app/ready " +
				"can only be restored in [{topology.kubernetes.io/zone=cn-hangzhou-b}]"}},
		{name: "every problem is named at once",
			claim:       restoring(claim("new", "toposnap-d", "1Gi"), snapv1.GroupName, "ready"),
			wantReasons: []string{"request at least 2Gi", "no node is in both"}},
		{name: "snapshot no node can reach now is admitted with a warning",
			claim:       restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "far"),
			wantAllowed: true, wantWarns: []string{"no node is in VolumeSnapshot app/far's topology [{topology.kubernetes.io/zone=cn-hangzhou-x}] now"}},
		{name: "unreadable topology annotation is admitted with a warning",
			claim:       restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "unreadable"),
			wantAllowed: true, wantWarns: []string{"VolumeSnapshotContent content-bad: annotation toposnap.io/accessible-topology"}},
		{name: "snapshot not ready yet is admitted with a warning",
			claim:       restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "pending"),
			wantAllowed: true, wantWarns: []string{"VolumeSnapshot app/pending is not ready to use yet"}},
		{name: "claim without a class name is checked against the default class",
			claim: defaulted, wantReasons: []string{"StorageClass default-d allows"}},
		{name: "claim of another driver's class is untouched",
			claim: restoring(claim("new", "other", "1Gi"), "wrong.example.com", "missing"), wantAllowed: true},
		{name: "claim of an unknown class is admitted with a warning",
			claim:       restoring(claim("new", "nope", "1Gi"), snapv1.GroupName, "missing"),
			wantAllowed: true, wantWarns: []string{"StorageClass nope not found: the claim's VolumeSnapshot app/missing was not checked"}},
		{name: "claim with an empty class name is untouched",
			claim: restoring(claim("new", "", "1Gi"), snapv1.GroupName, "missing"), wantAllowed: true},
		{name: "claim without a data source is untouched",
			claim: claim("new", "toposnap", "1Gi"), wantAllowed: true},
		{name: "populator data source is untouched",
			claim: populated, wantAllowed: true},
		{name: "update is untouched",
			claim: restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "missing"), update: true, wantAllowed: true},
		{name: "clone as large as its source of the same driver is admitted",
			claim: cloning(claim("new", "anywhere", "5Gi"), "source"), wantAllowed: true},
		{name: "clone of a missing claim is rejected",
			claim:       cloning(claim("new", "toposnap", "5Gi"), "gone"),
			wantReasons: []string{"PersistentVolumeClaim app/gone to clone not found: create it first"}},
		{name: "clone smaller than its source is rejected",
			claim:       cloning(claim("new", "toposnap", "1Gi"), "source"),
			wantReasons: []string{"requests 1Gi, less than PersistentVolumeClaim app/source's request 5Gi: request at least 5Gi"}},
		{name: "clone of another driver's claim is rejected",
			claim:       cloning(claim("new", "toposnap", "1Gi"), "foreign-source"),
			wantReasons: []string{"PersistentVolumeClaim app/foreign-source is of StorageClass other (driver other.csi.example.com)"}},
		{name: "clone of a claim whose class is gone is admitted with a warning",
			claim:       cloning(claim("new", "toposnap", "1Gi"), "orphan-source"),
			wantAllowed: true, wantWarns: []string{"the StorageClass of PersistentVolumeClaim app/orphan-source is not known"}},
		{name: "no claim is admitted", wantAllowed: true},
	}
	state := claimState(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			decision, err := ValidateClaim(context.Background(), tt.claim, !tt.update, state)
			if err != nil {
				t.Fatal(err)
			}
			if decision.Allowed != tt.wantAllowed {
				t.Fatalf("allowed = %v, want %v (message %q, warnings %q)", decision.Allowed, tt.wantAllowed, decision.Message(), decision.Warnings)
			}
			if len(decision.Reasons) != len(tt.wantReasons) {
				t.Errorf("reasons = %q, want %d containing %q", decision.Reasons, len(tt.wantReasons), tt.wantReasons)
			}
			for _, want := range tt.wantReasons {
				if !strings.Contains(decision.Message(), want) {
					t.Errorf("message %q does not contain %q", decision.Message(), want)
				}
			}
			if len(decision.Warnings) != len(tt.wantWarns) {
				t.Fatalf("warnings = %q, want %d containing %q", decision.Warnings, len(tt.wantWarns), tt.wantWarns)
			}
			for i, want := range tt.wantWarns {
				if !strings.Contains(decision.Warnings[i], want) {
					t.Errorf("warning %q does not contain %q", decision.Warnings[i], want)
				}
			}
		})
	}
}

func TestValidateClaimStateErrorIsReturned(t *testing.T) {
	_, err := ValidateClaim(context.Background(), restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "ready"), true, brokenState{})
	if !errors.Is(err, errBroken) {
		t.Fatalf("err = %v, want the state's error", err)
	}
}
