package webhook

import (
	"context"
	"errors"
	"fmt"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snaplisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
)

// State is the read-only view of the cluster that decisions look at. A
// lookup of something that does not exist returns nil and no error; an
// error means the state could not be read.
type State interface {
	StorageClass(ctx context.Context, name string) (*storagev1.StorageClass, error)
	// StorageClasses lists every StorageClass (to find the default one).
	StorageClasses() ([]*storagev1.StorageClass, error)
	Nodes() ([]*corev1.Node, error)
	Claim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error)
	VolumeSnapshot(ctx context.Context, namespace, name string) (*snapv1.VolumeSnapshot, error)
	VolumeSnapshotContent(ctx context.Context, name string) (*snapv1.VolumeSnapshotContent, error)
	VolumeSnapshotClasses() ([]*snapv1.VolumeSnapshotClass, error)
	// Ready is nil once the state can be read; until then every read
	// fails with its error (/readyz reports it).
	Ready() error
}

// Listers are the informer caches a cachedState reads.
type Listers struct {
	StorageClasses storagelisters.StorageClassLister
	Nodes          corelisters.NodeLister
	Claims         corelisters.PersistentVolumeClaimLister
	// Snapshots returns the snapshot API's caches while it is served and
	// they are filled; otherwise (nil, or false: the API is absent or not
	// known yet) snapshot reads go to the API server.
	Snapshots func() (SnapshotListers, bool)
	// Loaded is nil once the caches above are filled (nil: always).
	Loaded func() error
}

// SnapshotListers are the snapshot API's caches.
type SnapshotListers struct {
	Snapshots       snaplisters.VolumeSnapshotLister
	Contents        snaplisters.VolumeSnapshotContentLister
	SnapshotClasses snaplisters.VolumeSnapshotClassLister
}

// cachedState answers from informer caches. A single object missing from
// the cache is looked up once through the API (when clients are set) before
// it is reported missing: a VolumeSnapshot applied in the same `kubectl
// apply` as the claim restoring it may not have reached the cache yet, and
// a denial must not rest on a cache that lags. Lists come from the cache.
// Snapshots are read from the API server while their caches are not
// there (the CRDs not installed yet, or their caches filling), so that no
// decision rests on the webhook having started before the CRDs.
type cachedState struct {
	listers   Listers
	client    kubernetes.Interface     // nil: no API fallback
	snapshots snapshotclient.Interface // nil: no API fallback
}

// NewState returns a State reading listers, confirming misses through the
// clients when they are not nil.
func NewState(listers Listers, client kubernetes.Interface, snapshots snapshotclient.Interface) State {
	return &cachedState{listers: listers, client: client, snapshots: snapshots}
}

func (s *cachedState) Ready() error {
	if s.listers.Loaded == nil {
		return nil
	}
	return s.listers.Loaded()
}

func (s *cachedState) StorageClass(ctx context.Context, name string) (*storagev1.StorageClass, error) {
	if err := s.Ready(); err != nil {
		return nil, err
	}
	class, err := s.listers.StorageClasses.Get(name)
	if err == nil || !apierrors.IsNotFound(err) || s.client == nil {
		return found(class, err, "StorageClass "+name)
	}
	class, err = s.client.StorageV1().StorageClasses().Get(ctx, name, metav1.GetOptions{})
	return found(class, err, "StorageClass "+name)
}

func (s *cachedState) StorageClasses() ([]*storagev1.StorageClass, error) {
	if err := s.Ready(); err != nil {
		return nil, err
	}
	classes, err := s.listers.StorageClasses.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list StorageClasses: %w", err)
	}
	return classes, nil
}

func (s *cachedState) Nodes() ([]*corev1.Node, error) {
	if err := s.Ready(); err != nil {
		return nil, err
	}
	nodes, err := s.listers.Nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return nodes, nil
}

func (s *cachedState) Claim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	if err := s.Ready(); err != nil {
		return nil, err
	}
	what := "PersistentVolumeClaim " + namespace + "/" + name
	claim, err := s.listers.Claims.PersistentVolumeClaims(namespace).Get(name)
	if err == nil || !apierrors.IsNotFound(err) || s.client == nil {
		return found(claim, err, what)
	}
	claim, err = s.client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	return found(claim, err, what)
}

// snapshotCaches returns the snapshot caches when they are there.
func (s *cachedState) snapshotCaches() (SnapshotListers, bool) {
	if s.listers.Snapshots == nil {
		return SnapshotListers{}, false
	}
	return s.listers.Snapshots()
}

func (s *cachedState) VolumeSnapshot(ctx context.Context, namespace, name string) (*snapv1.VolumeSnapshot, error) {
	what := "VolumeSnapshot " + namespace + "/" + name
	if caches, ok := s.snapshotCaches(); ok {
		snapshot, err := caches.Snapshots.VolumeSnapshots(namespace).Get(name)
		if err == nil || !apierrors.IsNotFound(err) || s.snapshots == nil {
			return found(snapshot, err, what)
		}
	} else if s.snapshots == nil {
		return nil, fmt.Errorf("get %s: the snapshot API's caches are not there", what)
	}
	// The API server answers NotFound too when it serves no snapshot API.
	snapshot, err := s.snapshots.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, name, metav1.GetOptions{})
	return found(snapshot, err, what)
}

func (s *cachedState) VolumeSnapshotContent(ctx context.Context, name string) (*snapv1.VolumeSnapshotContent, error) {
	what := "VolumeSnapshotContent " + name
	if caches, ok := s.snapshotCaches(); ok {
		content, err := caches.Contents.Get(name)
		if err == nil || !apierrors.IsNotFound(err) || s.snapshots == nil {
			return found(content, err, what)
		}
	} else if s.snapshots == nil {
		return nil, fmt.Errorf("get %s: the snapshot API's caches are not there", what)
	}
	content, err := s.snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
	return found(content, err, what)
}

func (s *cachedState) VolumeSnapshotClasses() ([]*snapv1.VolumeSnapshotClass, error) {
	if caches, ok := s.snapshotCaches(); ok {
		classes, err := caches.SnapshotClasses.List(labels.Everything())
		if err != nil {
			return nil, fmt.Errorf("list VolumeSnapshotClasses: %w", err)
		}
		return classes, nil
	}
	if s.snapshots == nil {
		return nil, errors.New("list VolumeSnapshotClasses: the snapshot API's caches are not there")
	}
	// Only while the caches fill, or when no class can exist (no API).
	list, err := s.snapshots.SnapshotV1().VolumeSnapshotClasses().List(context.Background(), metav1.ListOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("list VolumeSnapshotClasses: %w", err)
	}
	classes := make([]*snapv1.VolumeSnapshotClass, 0, len(list.Items))
	for i := range list.Items {
		classes = append(classes, &list.Items[i])
	}
	return classes, nil
}

// found maps a lookup's result to State's contract: NotFound is (nil, nil).
func found[T any](object *T, err error, what string) (*T, error) {
	switch {
	case err == nil:
		return object, nil
	case apierrors.IsNotFound(err):
		return nil, nil
	}
	return nil, fmt.Errorf("get %s: %w", what, err)
}
