package webhook

import (
	"context"
	"fmt"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/toposnap/toposnap/internal/kube"
)

// cacheSyncTimeout bounds the wait for the first full list of every
// watched kind: a webhook that cannot list (missing RBAC, snapshot CRDs
// not installed) should say so rather than hang.
const cacheSyncTimeout = 2 * time.Minute

// annLastApplied is kubectl's copy of the applied object, never read here.
const annLastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// startInformers watches what the decisions read (StorageClasses, Nodes,
// PVCs, VolumeSnapshots, VolumeSnapshotContents, VolumeSnapshotClasses),
// waits until every cache is filled, and returns a State over them. The
// informers stop when ctx ends; stop waits for them.
func startInformers(ctx context.Context, client kubernetes.Interface, snapshots snapshotclient.Interface) (_ State, stop func(), err error) {
	kubeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(leanTransform))
	snapFactory := snapshotinformers.NewSharedInformerFactoryWithOptions(snapshots, 0, snapshotinformers.WithTransform(leanTransform))
	listers := Listers{
		StorageClasses:  kubeFactory.Storage().V1().StorageClasses().Lister(),
		Nodes:           kubeFactory.Core().V1().Nodes().Lister(),
		Claims:          kubeFactory.Core().V1().PersistentVolumeClaims().Lister(),
		Snapshots:       snapFactory.Snapshot().V1().VolumeSnapshots().Lister(),
		Contents:        snapFactory.Snapshot().V1().VolumeSnapshotContents().Lister(),
		SnapshotClasses: snapFactory.Snapshot().V1().VolumeSnapshotClasses().Lister(),
	}
	kubeFactory.Start(ctx.Done())
	snapFactory.Start(ctx.Done())
	stop = func() {
		kubeFactory.Shutdown()
		snapFactory.Shutdown()
	}
	syncCtx, cancel := context.WithTimeout(ctx, cacheSyncTimeout)
	defer cancel()
	var unsynced []string
	for kind, synced := range kubeFactory.WaitForCacheSync(syncCtx.Done()) {
		if !synced {
			unsynced = append(unsynced, kind.String())
		}
	}
	for kind, synced := range snapFactory.WaitForCacheSync(syncCtx.Done()) {
		if !synced {
			unsynced = append(unsynced, kind.String())
		}
	}
	if len(unsynced) > 0 {
		stop()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("stopped while filling informer caches: %w", context.Cause(ctx))
		}
		return nil, nil, fmt.Errorf("informer caches of %v not filled within %s: check the API server, RBAC (list/watch) and that the snapshot CRDs are installed: %w",
			unsynced, cacheSyncTimeout, context.Cause(syncCtx))
	}
	return NewState(listers, client, snapshots), stop, nil
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
