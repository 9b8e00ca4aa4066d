package kube

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// Holder campaigns for a coordination.k8s.io Lease and says whether this
// process holds it.
type Holder struct {
	held atomic.Bool
	// mu orders a term's start (which client-go runs in a goroutine of its
	// own) with its end: a start seen after its end holds nothing.
	mu sync.Mutex
	// OnStart, if set before Campaign, runs each time the Lease is won,
	// with a context that ends when the term ends (the Lease is lost or
	// released); Holds is true from just before it is called.
	OnStart func(term context.Context)
}

// Holds reports whether this process currently holds the Lease.
func (h *Holder) Holds() bool { return h != nil && h.held.Load() }

// Campaign runs leader election for namespace/lease as identity until ctx
// ends, entering again after a lost term, and releases the Lease on exit.
func (h *Holder) Campaign(ctx context.Context, client kubernetes.Interface, namespace, lease, identity string) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: lease},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Name:            lease,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(term context.Context) {
					// client-go ends the term's context before it calls
					// OnStoppedLeading: a start that finds it ended lost
					// the race with its own end.
					h.mu.Lock()
					started := term.Err() == nil
					h.held.Store(started)
					h.mu.Unlock()
					if !started {
						return
					}
					klog.InfoS("Holding lease", "lease", klog.KRef(namespace, lease), "identity", identity)
					if h.OnStart != nil {
						h.OnStart(term)
					}
				},
				OnStoppedLeading: func() {
					h.mu.Lock()
					h.held.Store(false)
					h.mu.Unlock()
					klog.InfoS("No longer holding lease", "lease", klog.KRef(namespace, lease), "identity", identity)
				},
			},
		})
	}
}

// Follow holds, without campaigning, while namespace/lease names identity
// as holder and has not expired: a watch of that one Lease (no polling),
// with a local clock for expiry. It is how a second agent of a node works
// alongside the agent that campaigns as the node. OnStart runs for each
// term, as with Campaign.
func (h *Holder) Follow(ctx context.Context, client kubernetes.Interface, namespace, lease, identity string) {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", lease).String()
		}))
	leases := factory.Coordination().V1().Leases()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	_, _ = leases.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, obj any) { poke(obj) }, DeleteFunc: poke,
	})
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var endTerm context.CancelFunc
	defer func() {
		if endTerm != nil {
			h.end(endTerm)
		}
	}()
	for {
		current, _ := leases.Lister().Leases(namespace).Get(lease)
		holds := HeldBy(current, identity, time.Now())
		switch {
		case holds && endTerm == nil:
			term, cancel := context.WithCancel(ctx)
			endTerm = cancel
			h.mu.Lock()
			h.held.Store(true)
			h.mu.Unlock()
			klog.InfoS("Following lease: held by this node", "lease", klog.KRef(namespace, lease), "identity", identity)
			if h.OnStart != nil {
				go h.OnStart(term)
			}
		case !holds && endTerm != nil:
			h.end(endTerm)
			endTerm = nil
			klog.InfoS("Following lease: no longer held by this node", "lease", klog.KRef(namespace, lease), "identity", identity)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// end ends a followed term: Holds turns false, then its context ends.
func (h *Holder) end(endTerm context.CancelFunc) {
	h.mu.Lock()
	h.held.Store(false)
	h.mu.Unlock()
	endTerm()
}

// HeldBy says whether lease names identity as its holder and is not
// expired at now (renew time plus duration).
func HeldBy(lease *coordinationv1.Lease, identity string, now time.Time) bool {
	if lease == nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != identity ||
		lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil {
		return false
	}
	return now.Before(lease.Spec.RenewTime.Add(time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second))
}
