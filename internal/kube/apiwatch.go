package kube

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/klog/v2"
)

// Presence is what is known of whether the API server serves an API.
type Presence uint8

const (
	// PresenceUnknown: no definite answer yet (the API server could not be
	// asked, or answered with an error other than NotFound).
	PresenceUnknown Presence = iota
	// PresenceServed: every resource asked for is served.
	PresenceServed
	// PresenceAbsent: the API server said it does not serve them.
	PresenceAbsent
)

func (p Presence) String() string {
	switch p {
	case PresenceServed:
		return "served"
	case PresenceAbsent:
		return "absent"
	}
	return "unknown"
}

// SnapshotGroupVersion and SnapshotResources are the snapshot API every
// toposnap component follows (the CRDs of external-snapshotter).
const SnapshotGroupVersion = "snapshot.storage.k8s.io/v1"

// SnapshotResources are the snapshot API's resources, all three needed.
var SnapshotResources = []string{"volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"}

// Intervals of an APIWatch's checks. Errors are retried quickly at first
// (the API server restarting, a proxy not up yet); an absent API is looked
// for again at a slowing pace, from a second (CRDs applied a moment after
// the component, by the same `helm install`) to a minute (CRDs installed
// by hand later), which bounds what thousands of node-deployed processes
// ask of the API server in a cluster that never installs them.
const (
	retryFirst  = 500 * time.Millisecond
	retryMax    = 30 * time.Second
	absentFirst = time.Second
	absentMax   = time.Minute
)

// APIWatch follows whether the API server serves an API group version's
// resources, by asking discovery: first until it gets a definite answer,
// then again while the API is absent, and whenever Recheck is called (a
// list answered NotFound: the CRDs may have been deleted). Only a definite
// answer changes what it says: an error while the API is served leaves it
// served, and the check is retried with backoff. Each change is logged once.
type APIWatch struct {
	discovery    discovery.DiscoveryInterface
	groupVersion string
	resources    []string
	// Pacing of the checks; see the constants above.
	retryFirst, retryMax, absentFirst, absentMax time.Duration

	mu       sync.Mutex
	presence Presence
	reason   string        // why it is not served, or the last error while unknown
	changed  chan struct{} // closed, and replaced, when presence changes
	recheck  chan struct{}
}

// NewAPIWatch follows groupVersion's resources; call Run.
func NewAPIWatch(discovery discovery.DiscoveryInterface, groupVersion string, resources ...string) *APIWatch {
	return &APIWatch{
		discovery: discovery, groupVersion: groupVersion, resources: resources,
		retryFirst: retryFirst, retryMax: retryMax, absentFirst: absentFirst, absentMax: absentMax,
		reason:  "not asked yet",
		changed: make(chan struct{}), recheck: make(chan struct{}, 1),
	}
}

// NewSnapshotAPIWatch follows the snapshot API.
func NewSnapshotAPIWatch(discovery discovery.DiscoveryInterface) *APIWatch {
	return NewAPIWatch(discovery, SnapshotGroupVersion, SnapshotResources...)
}

// State is what is known now, why the API is not served (empty when it
// is), and a channel closed at the next change.
func (w *APIWatch) State() (presence Presence, reason string, changed <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.presence, w.reason, w.changed
}

// GroupVersion is the API followed.
func (w *APIWatch) GroupVersion() string { return w.groupVersion }

// Recheck asks for a prompt check, as when a list of the API's resources
// answered NotFound.
func (w *APIWatch) Recheck() {
	select {
	case w.recheck <- struct{}{}:
	default:
	}
}

// Run checks until ctx ends.
func (w *APIWatch) Run(ctx context.Context) {
	retry, absent := w.retryFirst, w.absentFirst
	for {
		presence, reason := w.check(ctx)
		var wait time.Duration // 0: until Recheck
		switch presence {
		case PresenceUnknown:
			wait, retry = retry, min(2*retry, w.retryMax)
		case PresenceAbsent:
			wait, absent, retry = absent, min(2*absent, w.absentMax), w.retryFirst
		case PresenceServed:
			absent, retry = w.absentFirst, w.retryFirst
		}
		w.record(presence, reason, wait)
		var timer *time.Timer
		var expired <-chan time.Time
		if wait > 0 {
			// Jitter keeps many processes started together from asking together.
			timer = time.NewTimer(wait/2 + rand.N(wait/2+1))
			expired = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-w.recheck:
		case <-expired:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// check asks discovery once.
func (w *APIWatch) check(ctx context.Context) (Presence, string) {
	if err := ctx.Err(); err != nil {
		return PresenceUnknown, err.Error()
	}
	list, err := w.discovery.ServerResourcesForGroupVersion(w.groupVersion)
	switch {
	case apierrors.IsNotFound(err):
		return PresenceAbsent, fmt.Sprintf("the API server does not serve %s", w.groupVersion)
	case err != nil:
		return PresenceUnknown, fmt.Sprintf("cannot ask the API server whether it serves %s: %v", w.groupVersion, err)
	}
	var missing []string
	for _, resource := range w.resources {
		if !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == resource }) {
			missing = append(missing, resource)
		}
	}
	if len(missing) > 0 {
		return PresenceAbsent, fmt.Sprintf("the API server serves %s without %v", w.groupVersion, missing)
	}
	return PresenceServed, ""
}

// record keeps a check's outcome: a definite answer replaces what is
// known, an error only while nothing is.
func (w *APIWatch) record(presence Presence, reason string, retryIn time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if presence == PresenceUnknown {
		if w.presence != PresenceUnknown {
			klog.V(2).InfoS("API check failed; keeping what is known", "api", w.groupVersion, "presence", w.presence, "err", reason)
			return
		}
		if w.reason != reason {
			klog.InfoS("Cannot tell yet whether the API is served; retrying", "api", w.groupVersion, "reason", reason, "retryIn", retryIn)
		}
		w.reason = reason
		return
	}
	if presence == w.presence && reason == w.reason {
		return
	}
	if presence == PresenceServed {
		klog.InfoS("API served", "api", w.groupVersion)
	} else {
		klog.InfoS("API not served", "api", w.groupVersion, "reason", reason)
	}
	changedPresence := presence != w.presence
	w.presence, w.reason = presence, reason
	if changedPresence {
		close(w.changed)
		w.changed = make(chan struct{})
	}
}
