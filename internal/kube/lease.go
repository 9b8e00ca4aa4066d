package kube

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	// Bounded, if set before Campaign, honours the Lease's
	// CandidatesAnnotation (candidates.go): campaign only while listed.
	Bounded bool
	// followerPoll replaces FollowerPoll (tests).
	followerPoll time.Duration
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
		campaign, stop := ctx, context.CancelFunc(func() {})
		if h.Bounded {
			if !h.awaitCandidacy(ctx, client, namespace, lease, identity) {
				return
			}
			campaign, stop = context.WithCancel(ctx)
			go h.dropCandidacy(campaign, stop, client, namespace, lease, identity)
		}
		leaderelection.RunOrDie(campaign, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   leaseDuration,
			RenewDeadline:   renewDeadline,
			RetryPeriod:     retryPeriod,
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
		stop()
	}
}

func (h *Holder) grace() time.Duration {
	if h.followerPoll > 0 {
		return 3 * h.followerPoll
	}
	return FallbackGrace
}

func (h *Holder) poll() time.Duration {
	if h.followerPoll > 0 {
		return h.followerPoll
	}
	return FollowerPoll
}

// awaitCandidacy reads the Lease once per follower poll until identity may
// campaign for it (a Lease that cannot be read, or does not exist yet, is
// campaigned for: client-go creates it or retries); false when ctx ended.
func (h *Holder) awaitCandidacy(ctx context.Context, client kubernetes.Interface, namespace, lease, identity string) bool {
	for {
		current, err := client.CoordinationV1().Leases(namespace).Get(ctx, lease, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return ctx.Err() == nil // client-go makes it
		case err != nil:
			// An API server in trouble is not read every 2 s by every node.
			klog.V(2).InfoS("Cannot read the lease; following", "lease", klog.KRef(namespace, lease), "err", err)
		case MayCampaign(current, identity, time.Now(), h.grace()):
			return ctx.Err() == nil
		}
		klog.V(4).InfoS("Not a candidate for the lease; following", "lease", klog.KRef(namespace, lease), "identity", identity)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(h.poll()):
		}
	}
}

// dropCandidacy ends the campaign (stop) once identity, not holding the
// Lease, may no longer campaign for it; it returns when campaign ends.
func (h *Holder) dropCandidacy(campaign context.Context, stop context.CancelFunc, client kubernetes.Interface, namespace, lease, identity string) {
	ticker := time.NewTicker(h.poll())
	defer ticker.Stop()
	for {
		select {
		case <-campaign.Done():
			return
		case <-ticker.C:
		}
		if h.Holds() {
			continue
		}
		current, err := client.CoordinationV1().Leases(namespace).Get(campaign, lease, metav1.GetOptions{})
		if err == nil && !MayCampaign(current, identity, time.Now(), h.grace()) && !h.Holds() {
			klog.InfoS("No longer a candidate for the lease", "lease", klog.KRef(namespace, lease), "identity", identity)
			stop()
			return
		}
	}
}
