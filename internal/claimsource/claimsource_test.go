package claimsource

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func TestOf(t *testing.T) {
	tests := []struct {
		name     string
		spec     corev1.PersistentVolumeClaimSpec
		want     Source
		wantOK   bool
		snapshot bool
		clone    bool
	}{
		{"no source", corev1.PersistentVolumeClaimSpec{}, Source{}, false, false, false},
		{"dataSource snapshot", corev1.PersistentVolumeClaimSpec{DataSource: &corev1.TypedLocalObjectReference{APIGroup: ptr.To(SnapshotGroup), Kind: KindSnapshot, Name: "s"}},
			Source{SnapshotGroup, KindSnapshot, "ns", "s"}, true, true, false},
		{"dataSourceRef wins and may name another namespace", corev1.PersistentVolumeClaimSpec{
			DataSource:    &corev1.TypedLocalObjectReference{Kind: KindClaim, Name: "old"},
			DataSourceRef: &corev1.TypedObjectReference{Kind: KindClaim, Name: "new", Namespace: ptr.To("other")}},
			Source{"", KindClaim, "other", "new"}, true, false, true},
		{"snapshot of a wrong group is not a snapshot", corev1.PersistentVolumeClaimSpec{DataSource: &corev1.TypedLocalObjectReference{APIGroup: ptr.To("example.com"), Kind: KindSnapshot, Name: "s"}},
			Source{"example.com", KindSnapshot, "ns", "s"}, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claim := &corev1.PersistentVolumeClaim{Spec: tt.spec}
			claim.Namespace = "ns"
			got, ok := Of(claim)
			if got != tt.want || ok != tt.wantOK || got.IsSnapshot() != tt.snapshot || got.IsClaim() != tt.clone {
				t.Fatalf("Of = %+v, %v (snapshot %v, clone %v)", got, ok, got.IsSnapshot(), got.IsClaim())
			}
		})
	}
}
