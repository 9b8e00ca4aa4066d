package webhook

import (
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
)

func TestValidateSnapshotClass(t *testing.T) {
	existing := []*snapv1.VolumeSnapshotClass{
		snapshotClass("toposnap-default", DriverName, true),
		snapshotClass("toposnap-slow", DriverName, false),
		snapshotClass("other-default", otherCSI, true),
		nil,
	}
	tests := []struct {
		name        string
		class, old  *snapv1.VolumeSnapshotClass
		classes     []*snapv1.VolumeSnapshotClass
		wantMessage string // "": admitted
	}{
		{name: "second default for a driver is rejected naming the first",
			class: snapshotClass("toposnap-fast", DriverName, true), classes: existing,
			wantMessage: "VolumeSnapshotClass toposnap-default is already the default for driver csi.toposnap.io: " +
				"remove annotation snapshot.storage.kubernetes.io/is-default-class from toposnap-default or from toposnap-fast"},
		{name: "making an existing class the second default is rejected",
			class: snapshotClass("toposnap-slow", DriverName, true), old: snapshotClass("toposnap-slow", DriverName, false), classes: existing,
			wantMessage: "toposnap-default is already the default"},
		{name: "first default for a driver is admitted",
			class: snapshotClass("new-default", "third.csi.example.com", true), classes: existing},
		{name: "non-default class is admitted",
			class: snapshotClass("toposnap-fast", DriverName, false), classes: existing},
		{name: "the default itself can be updated",
			class: snapshotClass("toposnap-default", DriverName, true), old: snapshotClass("toposnap-default", DriverName, true), classes: existing},
		{name: "a default that predates the webhook can still be edited",
			class: snapshotClass("second", DriverName, true), old: snapshotClass("second", DriverName, true),
			classes: append(existing, snapshotClass("second", DriverName, true))},
		{name: "annotation other than true is not a default",
			class: func() *snapv1.VolumeSnapshotClass {
				c := snapshotClass("maybe", DriverName, false)
				c.Annotations = map[string]string{AnnDefaultSnapshotClass: "yes"}
				return c
			}(), classes: existing},
		{name: "several existing defaults are all named",
			class:       snapshotClass("third", DriverName, true),
			classes:     append(existing, snapshotClass("second", DriverName, true)),
			wantMessage: "VolumeSnapshotClasses second, toposnap-default are already the default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			decision := ValidateSnapshotClass(tt.class, tt.old, tt.classes)
			if tt.wantMessage == "" {
				if !decision.Allowed {
					t.Fatalf("denied: %s", decision.Message())
				}
				return
			}
			if decision.Allowed {
				t.Fatalf("admitted, want denied with %q", tt.wantMessage)
			}
			if !strings.Contains(decision.Message(), tt.wantMessage) {
				t.Errorf("message %q does not contain %q", decision.Message(), tt.wantMessage)
			}
		})
	}
}
