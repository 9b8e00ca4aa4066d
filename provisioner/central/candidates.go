package central

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// The zone Leases' candidates (internal/kube/candidates.go): the leader
// writes on each of a zone's two Leases which few of the zone's nodes may
// campaign for it, so that the Lease is read every 2 s by those few, not by
// every node of the zone. A node is eligible when the driver is registered
// on it (its CSINode lists the driver: its agents run). The holder stays a
// candidate; a Lease nobody has held for rotateAfter gets the next few.
// Nodes that are not candidates campaign anyway only after
// kube.FallbackGrace, longer than a rotation takes to be noticed.

// candidateKeeper keeps the zone Leases' candidates.
type candidateKeeper struct {
	client    kubernetes.Interface
	namespace string
	// k candidates per Lease; rotateAfter without a holder moves to the
	// next k.
	k           int
	rotateAfter time.Duration
	now         func() time.Time
	// rounds, unheldSince and renewals are per Lease, the leader's memory:
	// a new leader starts again at round 0, which only delays a rotation.
	rounds      map[string]int
	unheldSince map[string]time.Time
	// renewals is each Lease's last holder and renew time as seen, and
	// when this process saw it change: a holder is alive while it keeps
	// changing, on this clock (the nodes' clocks may differ from it).
	renewals map[string]renewal
}

type renewal struct {
	holder, renewed string
	seen            time.Time
}

func newCandidateKeeper(client kubernetes.Interface, namespace string, k int) *candidateKeeper {
	return &candidateKeeper{client: client, namespace: namespace, k: k, rotateAfter: kube.RotateAfter,
		now: time.Now, rounds: map[string]int{}, unheldSince: map[string]time.Time{}, renewals: map[string]renewal{}}
}

// nodeLabels is what the keeper needs of a Node: its name and labels.
type nodeLabels struct {
	name   string
	labels map[string]string
}

// eligibleByZone groups the nodes on which driver is registered by their
// "region/zone" (nodes without a zone have no zone Lease), each group
// sorted.
func eligibleByZone(driver string, nodes []nodeLabels, csiNodes []*storagev1.CSINode) map[string][]string {
	registered := map[string]bool{}
	for _, cn := range csiNodes {
		if slices.ContainsFunc(cn.Spec.Drivers, func(d storagev1.CSINodeDriver) bool { return d.Name == driver }) {
			registered[cn.Name] = true
		}
	}
	out := map[string][]string{}
	for _, n := range nodes {
		zone := n.labels[topology.ZoneKey]
		if zone == "" || !registered[n.name] {
			continue
		}
		key := n.labels[topology.RegionKey] + "/" + zone
		out[key] = append(out[key], n.name)
	}
	for _, names := range out {
		slices.Sort(names)
	}
	return out
}

// liveHolder is the Lease's holder while it keeps renewing it: its renew
// time changed within the Lease's duration and a sync of this process's
// clock; "" otherwise.
func (c *candidateKeeper) liveHolder(name string, lease *coordinationv1.Lease, now time.Time) string {
	if lease == nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" || lease.Spec.RenewTime == nil {
		delete(c.renewals, name)
		return ""
	}
	current := renewal{holder: *lease.Spec.HolderIdentity, renewed: lease.Spec.RenewTime.UTC().String()}
	if last, ok := c.renewals[name]; ok && last.holder == current.holder && last.renewed == current.renewed {
		current.seen = last.seen
	} else {
		current.seen = now
	}
	c.renewals[name] = current
	duration := 15 * time.Second
	if lease.Spec.LeaseDurationSeconds != nil {
		duration = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	}
	if now.Sub(current.seen) > duration+syncEvery {
		return ""
	}
	return current.holder
}

// syncEvery is how often the leader writes the candidates.
const syncEvery = 20 * time.Second

// sync writes the candidates of every zone's two Leases.
func (c *candidateKeeper) sync(ctx context.Context, zones map[string][]string) {
	for key, eligible := range zones {
		region, zone, _ := strings.Cut(key, "/")
		for _, lease := range []string{kube.ZoneLeaseName(region, zone), kube.SnapshotLeaseName(region, zone)} {
			if err := c.syncLease(ctx, lease, eligible); err != nil {
				klog.ErrorS(err, "Cannot write the Lease's candidates", "lease", klog.KRef(c.namespace, lease), "zone", key)
			}
		}
	}
}

// syncLease writes one Lease's candidates, creating the Lease (held by
// nobody) when it does not exist yet.
func (c *candidateKeeper) syncLease(ctx context.Context, name string, eligible []string) error {
	leases := c.client.CoordinationV1().Leases(c.namespace)
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease, err = nil, nil
	}
	if err != nil {
		return err
	}
	now := c.now()
	holder := c.liveHolder(name, lease, now)
	switch since, waiting := c.unheldSince[name]; {
	case holder != "":
		delete(c.unheldSince, name)
	case !waiting:
		c.unheldSince[name] = now
	case now.Sub(since) > c.rotateAfter:
		// Nobody of this round took it: their agents are down, or slow to
		// register. The next round.
		c.rounds[name]++
		c.unheldSince[name] = now
		klog.InfoS("No candidate took the Lease; offering it to the next", "lease", klog.KRef(c.namespace, name), "round", c.rounds[name])
	}
	want := strings.Join(kube.ChooseCandidates(eligible, name, holder, c.rounds[name], c.k), ",")
	if lease == nil {
		_, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.namespace,
			Annotations: map[string]string{kube.CandidatesAnnotation: want}}}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // a node made it meanwhile: the next sync annotates it
		}
		return err
	}
	if got, ok := lease.Annotations[kube.CandidatesAnnotation]; ok && got == want {
		return nil
	}
	lease = lease.DeepCopy()
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[kube.CandidatesAnnotation] = want
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("update: %w", err) // a conflict is a renewal: the next sync
	}
	return nil
}
