package provisioner

import (
	"context"
	"testing"

	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/topology"
)

func capacityObject(class, manager string) *storagev1.CSIStorageCapacity {
	return &storagev1.CSIStorageCapacity{
		ObjectMeta: metav1.ObjectMeta{
			Name: CapacityName(class, topology.Segment{topology.NodeKey: "node1"}), Namespace: "toposnap",
			Labels: map[string]string{labelDriver: driver, labelManager: manager},
		},
		StorageClassName: class,
	}
}

func TestCapacityOfDeletedClassesIsRemoved(t *testing.T) {
	otherDriversClass := classObject("now-nfs", "node", storagev1.VolumeBindingWaitForFirstConsumer)
	otherDriversClass.Provisioner = "nfs.example.com"
	cases := []struct {
		name string
		// cached is in the node's cache and the API; late only in the API
		// (created after the cache was filled).
		cached, late *storagev1.StorageClass
		capacity     *storagev1.CSIStorageCapacity
		wantKept     bool
	}{
		{name: "a live class keeps its capacity", cached: classObject("fast", "node", storagev1.VolumeBindingWaitForFirstConsumer),
			capacity: capacityObject("fast", capacityManager), wantKept: true},
		{name: "a deleted class loses its capacity",
			capacity: capacityObject("gone", capacityManager), wantKept: false},
		{name: "a class not yet cached keeps its capacity", late: classObject("new", "zone", storagev1.VolumeBindingWaitForFirstConsumer),
			capacity: capacityObject("new", capacityManager), wantKept: true},
		{name: "a class recreated for another driver loses its capacity", cached: otherDriversClass,
			capacity: capacityObject("now-nfs", capacityManager), wantKept: false},
		{name: "another manager's capacity is left alone",
			capacity: capacityObject("gone", "external-provisioner"), wantKept: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, nodeObject("node1", "b"))
			if _, err := w.Kube.StorageV1().CSIStorageCapacities("toposnap").Create(context.Background(), tc.capacity, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if tc.cached != nil {
				w.create(tc.cached)
			}
			server, client := fakecsi.Start(t)
			n := w.startNode("node1", "b", server, client, false)
			if tc.late != nil {
				w.create(tc.late)
			}
			if err := n.ctrl.removeStaleCapacity(context.Background()); err != nil {
				t.Fatal(err)
			}
			_, err := w.Kube.StorageV1().CSIStorageCapacities("toposnap").Get(context.Background(), tc.capacity.Name, metav1.GetOptions{})
			switch {
			case tc.wantKept && err != nil:
				t.Fatalf("capacity of class %s removed: %v", tc.capacity.StorageClassName, err)
			case !tc.wantKept && !apierrors.IsNotFound(err):
				t.Fatalf("capacity of class %s still there (err %v)", tc.capacity.StorageClassName, err)
			}
		})
	}
}
