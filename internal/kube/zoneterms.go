package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"k8s.io/klog/v2"
)

// ZoneLeaseName is the coordination.k8s.io Lease whose holder does a zone's
// node-independent work: Immediate-binding zone claims, zone volume
// deletion and resizing, the zone's snapshots and its orphan report.
func ZoneLeaseName(region, zone string) string {
	sum := sha256.Sum256([]byte(region + "/" + zone))
	return "toposnap-zone-" + hex.EncodeToString(sum[:8])
}

// SnapshotLeaseName is the Lease whose holder's snapshotter cuts and
// deletes the zone's snapshots.
func SnapshotLeaseName(region, zone string) string { return ZoneLeaseName(region, zone) + "-snapshots" }

// ZoneTerms runs a zone's work for each term this node holds the zone's
// Lease: Term gets fresh informers over the zone's objects (Env's
// ZoneInformers) and runs until the term's context ends, at the loss; the
// informers are shut down after it returns. So the zone's objects are
// watched by its holder alone. The provisioner and the snapshotter each
// campaign for a Lease of their own (SnapshotLeaseName), so a node whose
// snapshotter is down does not keep the zone's snapshots from moving on.
type ZoneTerms struct {
	Env       *Env
	Namespace string
	Lease     string
	Identity  string
	// Holder campaigns; Term may read it.
	Holder Holder
	// Term registers its informers on zone, starts them with StartZone and
	// works until term ends.
	Term func(term context.Context, zone Informers)
}

// Run campaigns until ctx ends.
func (z *ZoneTerms) Run(ctx context.Context) {
	z.Holder.OnStart = z.term
	z.Holder.Bounded = true // the Lease's candidates, if toposnap-controller wrote them
	z.Holder.Campaign(ctx, z.Env.Client, z.Namespace, z.Lease, z.Identity)
}

// term is one term's work, in the goroutine client-go started for it.
func (z *ZoneTerms) term(term context.Context) {
	inf, ok := z.Env.ZoneInformers()
	if !ok {
		return
	}
	defer inf.RoutedSnaps.Shutdown()
	defer inf.Routed.Shutdown()
	klog.InfoS("Watching the zone's objects while holding its Lease", "lease", z.Lease, "identity", z.Identity)
	z.Term(term, inf)
	klog.InfoS("Stopped watching the zone's objects", "lease", z.Lease, "identity", z.Identity)
}
