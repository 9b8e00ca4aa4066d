package kube

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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
