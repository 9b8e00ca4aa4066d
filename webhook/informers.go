package webhook

import (
	"context"
	"errors"
	"sync/atomic"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
)

// annLastApplied is kubectl's copy of the applied object, never read here.
const annLastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// startInformers watches what the decisions read (StorageClasses, Nodes,
// PVCs, and, while the snapshot API is served, VolumeSnapshots,
// VolumeSnapshotContents and VolumeSnapshotClasses) and returns a State
// over them at once: it is Ready once the core caches are filled, which
// waits for the API server as long as it takes, and reads snapshots from
// the API server while their caches are not there. The informers stop
// when ctx ends; stop waits for them.
func startInformers(ctx context.Context, client kubernetes.Interface, snapshots snapshotclient.Interface) (_ State, stop func()) {
	kubeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(leanTransform))
	classes, nodes, claims := kubeFactory.Storage().V1().StorageClasses(), kubeFactory.Core().V1().Nodes(), kubeFactory.Core().V1().PersistentVolumeClaims()
	synced := []cache.InformerSynced{classes.Informer().HasSynced, nodes.Informer().HasSynced, claims.Informer().HasSynced}
	snapshotAPI := kube.NewSnapshotAPIWatch(client.Discovery())
	snapshotCaches := kube.NewSnapshotCaches(snapshotAPI, snapshots, 0, registerSnapshotInformers, snapshotinformers.WithTransform(leanTransform))
	var loaded atomic.Bool
	listers := Listers{
		StorageClasses: classes.Lister(), Nodes: nodes.Lister(), Claims: claims.Lister(),
		Snapshots: snapshotCaches.Current,
		Loaded: func() error {
			if loaded.Load() {
				return nil
			}
			return errors.New("the webhook is starting: its caches of StorageClasses, nodes and claims are filling (is the API server reachable?)")
		},
	}
	ctx, cancel := context.WithCancel(ctx)
	go snapshotAPI.Run(ctx)
	go snapshotCaches.Run(ctx)
	kubeFactory.Start(ctx.Done())
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			loaded.Store(true)
			klog.InfoS("Informer caches filled")
			snapshotAPI.Recheck() // the API server answers now: no need to wait for the next retry
		}
	}()
	return NewState(listers, client, snapshots), func() {
		cancel()
		kubeFactory.Shutdown()
	}
}

// registerSnapshotInformers creates, on a new factory, the snapshot
// informers the decisions read.
func registerSnapshotInformers(factory snapshotinformers.SharedInformerFactory) (SnapshotListers, []cache.SharedIndexInformer) {
	v1 := factory.Snapshot().V1()
	return SnapshotListers{Snapshots: v1.VolumeSnapshots().Lister(), Contents: v1.VolumeSnapshotContents().Lister(), SnapshotClasses: v1.VolumeSnapshotClasses().Lister()},
		[]cache.SharedIndexInformer{v1.VolumeSnapshots().Informer(), v1.VolumeSnapshotContents().Informer(), v1.VolumeSnapshotClasses().Informer()}
}

// leanTransform keeps cached objects small: no managed fields, no kubectl
// last-applied copy, and of a Node only its name and labels, which is all
// the decisions read of it.
func leanTransform(obj any) (any, error) {
	if node, ok := obj.(*corev1.Node); ok {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: node.Name, UID: node.UID, ResourceVersion: node.ResourceVersion, Labels: node.Labels,
		}}, nil
	}
	obj, err := kube.StripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	if accessor, err := meta.Accessor(obj); err == nil {
		if annotations := accessor.GetAnnotations(); annotations[annLastApplied] != "" {
			delete(annotations, annLastApplied)
			accessor.SetAnnotations(annotations)
		}
	}
	return obj, nil
}
