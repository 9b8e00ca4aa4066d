package provisioner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// ZoneLeaseName is the coordination.k8s.io Lease whose holder owns a zone's
// node-independent work: Immediate-binding zone claims, zone volume
// deletion, resizing and the zone's orphan report.
func ZoneLeaseName(region, zone string) string {
	sum := sha256.Sum256([]byte(region + "/" + zone))
	return "toposnap-zone-" + hex.EncodeToString(sum[:8])
}

// zoneOwner campaigns for the zone's Lease and says whether this node holds it.
type zoneOwner struct {
	held atomic.Bool
}

// Holds reports whether this node currently owns its zone.
func (z *zoneOwner) Holds() bool { return z != nil && z.held.Load() }

// campaign runs leader election for the zone until ctx ends, re-entering
// after a lost term.
func (z *zoneOwner) campaign(ctx context.Context, client kubernetes.Interface, namespace, lease, identity string) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metaFor(namespace, lease),
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
				OnStartedLeading: func(context.Context) {
					klog.InfoS("Owning zone", "lease", lease, "node", identity)
					z.held.Store(true)
				},
				OnStoppedLeading: func() {
					klog.InfoS("No longer owning zone", "lease", lease, "node", identity)
					z.held.Store(false)
				},
			},
		})
	}
}

func metaFor(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}
