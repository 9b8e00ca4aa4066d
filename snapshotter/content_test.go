package snapshotter

import (
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

func class(name, driver string, isDefault bool) *snapv1.VolumeSnapshotClass {
	c := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if isDefault {
		c.Annotations = map[string]string{AnnDefaultClass: "true"}
	}
	return c
}

func TestDefaultClass(t *testing.T) {
	tests := []struct {
		name    string
		classes []*snapv1.VolumeSnapshotClass
		want    string
		wantErr string
	}{
		{"one default", []*snapv1.VolumeSnapshotClass{class("a", "csi.toposnap.io", true), class("b", "csi.toposnap.io", false)}, "a", ""},
		{"default of another driver ignored", []*snapv1.VolumeSnapshotClass{class("a", "other", true)}, "", "no default"},
		{"two defaults refused", []*snapv1.VolumeSnapshotClass{class("a", "csi.toposnap.io", true), class("b", "csi.toposnap.io", true)}, "", "keep one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DefaultClass(tt.classes, "csi.toposnap.io")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got.Name != tt.want {
				t.Fatalf("got %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestContentFromSnapshot(t *testing.T) {
	created := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	snapshot := &csi.Snapshot{SnapshotId: "sn-1", SizeBytes: 1 << 30, ReadyToUse: true, CreationTime: timestamppb.New(created),
		AccessibleTopology: []*csi.Topology{{Segments: map[string]string{"topology.toposnap.io/node": "node2"}}}}
	status := ContentStatus(snapshot)
	if *status.SnapshotHandle != "sn-1" || !*status.ReadyToUse || *status.RestoreSize != 1<<30 || *status.CreationTime != created.UnixNano() {
		t.Fatalf("status = %+v", status)
	}
	annotation, err := TopologyAnnotation(snapshot)
	if err != nil {
		t.Fatal(err)
	}
	segments, err := topology.DecodeSegments(annotation)
	if err != nil || len(segments) != 1 || segments[0]["topology.toposnap.io/node"] != "node2" {
		t.Fatalf("round trip of %s = %v, %v", annotation, segments, err)
	}
	if _, err := topology.DecodeSegments("{not json"); err == nil {
		t.Fatal("malformed annotation accepted")
	}
}
