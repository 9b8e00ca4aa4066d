package kube

import (
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/reference"
)

// TestEventSchemeNamesSnapshots: events can be recorded on snapshot
// objects as on core ones (a reference needs the object's kind).
func TestEventSchemeNamesSnapshots(t *testing.T) {
	for _, obj := range []runtime.Object{&snapv1.VolumeSnapshot{}, &snapv1.VolumeSnapshotContent{}, &corev1.PersistentVolumeClaim{}} {
		ref, err := reference.GetReference(EventScheme(), obj)
		if err != nil || ref.Kind == "" {
			t.Fatalf("%T: reference %v, %v", obj, ref, err)
		}
	}
}
