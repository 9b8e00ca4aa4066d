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

// candidateKeeper keeps the zone Leases' candidates.
type candidateKeeper struct {
	client    kubernetes.Interface
	namespace string
	// k candidates per Lease; rotateAfter without a holder moves to the
	// next k.
	k           int
	rotateAfter time.Duration
	now         func() time.Time
	// rounds and unheldSince are per Lease, the leader's memory: a new
	// leader starts again at round 0, which only delays a rotation.
	rounds      map[string]int
	unheldSince map[string]time.Time
}

func newCandidateKeeper(client kubernetes.Interface, namespace string, k int) *candidateKeeper {
	return &candidateKeeper{client: client, namespace: namespace, k: k, rotateAfter: 90 * time.Second,
		now: time.Now, rounds: map[string]int{}, unheldSince: map[string]time.Time{}}
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
	holder := ""
	if lease != nil && lease.Spec.HolderIdentity != nil && !kube.Unrenewed(lease, now, 0) {
		holder = *lease.Spec.HolderIdentity
	}
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
