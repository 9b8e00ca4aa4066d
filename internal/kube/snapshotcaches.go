package kube

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// SnapshotCaches keeps informer caches of the snapshot API while an
// APIWatch says it is served: they are started when it appears, offered
// (Current) only once filled, and dropped when it goes away. A component
// started before the snapshot CRDs thus picks them up, and one whose CRDs
// were deleted stops reading caches nothing updates. L is what the
// component reads (its listers).
type SnapshotCaches[L any] struct {
	api    *APIWatch
	client snapshotclient.Interface
	resync time.Duration
	// register creates the informers the component reads on a new
	// factory and returns its listers over them.
	register func(snapshotinformers.SharedInformerFactory) (L, []cache.SharedIndexInformer)
	options  []snapshotinformers.SharedInformerOption
	current  atomic.Pointer[L]
}

// NewSnapshotCaches follows api; register is called on each new factory,
// made with options after a StripManagedFields transform. Call Run.
func NewSnapshotCaches[L any](api *APIWatch, client snapshotclient.Interface, resync time.Duration,
	register func(snapshotinformers.SharedInformerFactory) (L, []cache.SharedIndexInformer),
	options ...snapshotinformers.SharedInformerOption) *SnapshotCaches[L] {
	options = append([]snapshotinformers.SharedInformerOption{snapshotinformers.WithTransform(StripManagedFields)}, options...)
	return &SnapshotCaches[L]{api: api, client: client, resync: resync, register: register, options: options}
}

// Current returns the listers while the snapshot API is served and their
// caches are filled.
func (c *SnapshotCaches[L]) Current() (L, bool) {
	if presence, _, _ := c.api.State(); presence == PresenceServed {
		if listers := c.current.Load(); listers != nil {
			return *listers, true
		}
	}
	var none L
	return none, false
}

// Waiting says why it is not known yet where snapshots are: the API's
// presence is unknown, or it is served and the caches are still filling.
// Empty when Current has caches or the API is absent.
func (c *SnapshotCaches[L]) Waiting() string {
	presence, reason, _ := c.api.State()
	switch presence {
	case PresenceAbsent:
		return ""
	case PresenceServed:
		if c.current.Load() != nil {
			return ""
		}
		return fmt.Sprintf("filling the caches of %s", c.api.GroupVersion())
	}
	return reason
}

// Run follows the API until ctx ends.
func (c *SnapshotCaches[L]) Run(ctx context.Context) {
	for {
		presence, _, changed := c.api.State()
		if presence == PresenceServed {
			c.serve(ctx, changed)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// serve runs one factory's informers until the API's presence changes or
// ctx ends, offering their listers while they are filled.
func (c *SnapshotCaches[L]) serve(parent context.Context, changed <-chan struct{}) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() {
		select {
		case <-changed:
			cancel()
		case <-ctx.Done():
		}
	}()
	factory := snapshotinformers.NewSharedInformerFactoryWithOptions(c.client, c.resync, c.options...)
	listers, informers := c.register(factory)
	synced := make([]cache.InformerSynced, 0, len(informers))
	for _, informer := range informers {
		// A NotFound from a list or watch: the CRDs may have been deleted.
		if err := informer.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			if apierrors.IsNotFound(err) {
				c.api.Recheck()
			}
			cache.DefaultWatchErrorHandler(ctx, r, err)
		}); err != nil {
			klog.ErrorS(err, "Cannot watch snapshot informer errors")
		}
		synced = append(synced, informer.HasSynced)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	c.current.Store(&listers)
	klog.InfoS("Snapshot caches filled: snapshots are known", "api", c.api.GroupVersion())
	<-ctx.Done()
	c.current.Store(nil)
	if parent.Err() == nil {
		klog.InfoS("Snapshot caches dropped", "api", c.api.GroupVersion())
	}
}
