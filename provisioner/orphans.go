package provisioner

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
)

// volumeStateKey in a listed volume's context says it is not ready yet
// ("creating" or "deleting"); the driver's StateContextKey.
const volumeStateKey = "toposnap.io/state"

// orphanTracker remembers when each unreferenced volume was first seen, so
// a volume whose PV is still being created is not called an orphan.
type orphanTracker struct {
	firstSeen map[string]time.Time
}

// Orphans returns the volumes no PV references that have stayed so for at
// least grace, updating the first-seen times (a pure step, for tests).
func (o *orphanTracker) Orphans(volumes []*csi.Volume, referenced map[string]bool, now time.Time, grace time.Duration) []*csi.Volume {
	if o.firstSeen == nil {
		o.firstSeen = map[string]time.Time{}
	}
	current := map[string]bool{}
	var orphans []*csi.Volume
	for _, vol := range volumes {
		id := vol.GetVolumeId()
		if referenced[id] {
			continue
		}
		current[id] = true
		first, ok := o.firstSeen[id]
		if !ok {
			o.firstSeen[id] = now
			continue
		}
		if now.Sub(first) >= grace {
			orphans = append(orphans, vol)
		}
	}
	for id := range o.firstSeen {
		if !current[id] {
			delete(o.firstSeen, id)
		}
	}
	return orphans
}

// reportOrphans lists the driver's volumes every interval and reports (and,
// with deleteOrphans, deletes) those this node is responsible for that no PV
// references.
func (c *Controller) reportOrphans(ctx context.Context, interval, grace time.Duration, deleteOrphans bool) {
	tracker := &orphanTracker{}
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := c.orphanRound(ctx, tracker, grace, deleteOrphans); err != nil {
			klog.ErrorS(err, "Orphan check failed")
		}
	}, interval)
}

func (c *Controller) orphanRound(ctx context.Context, tracker *orphanTracker, grace time.Duration, deleteOrphans bool) error {
	var volumes []*csi.Volume
	token := ""
	for {
		resp, err := c.csi.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return fmt.Errorf("list volumes: %w", err)
		}
		for _, entry := range resp.GetEntries() {
			// A volume still being made (a CreateVolume may be in flight,
			// and a restore can outlive any grace) or being deleted is not
			// an orphan; the driver says so in its volume context.
			if entry.GetVolume().GetVolumeContext()[volumeStateKey] != "" {
				continue
			}
			if c.responsibleForSegments(entry.GetVolume().GetAccessibleTopology()) {
				volumes = append(volumes, entry.GetVolume())
			}
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	pvs, err := c.volumes.List(labels.Everything())
	if err != nil {
		return err
	}
	referenced := map[string]bool{}
	for _, pv := range pvs {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == c.driverName {
			referenced[pv.Spec.CSI.VolumeHandle] = true
		}
	}
	orphans := tracker.Orphans(volumes, referenced, time.Now(), grace)
	if c.routed && len(orphans) > 0 {
		// A routed cache lacks PVs not routed yet (just created, or left
		// unlabelled while the central controller was down): before anything
		// is called an orphan, those are read from the API server.
		if err := c.listReferenced(ctx, referenced); err != nil {
			return fmt.Errorf("confirm orphans: %w", err)
		}
		orphans = slices.DeleteFunc(orphans, func(vol *csi.Volume) bool { return referenced[vol.GetVolumeId()] })
	}
	c.countOrphans(orphans)
	node, _ := c.nodes.Get(c.nodeName)
	for _, vol := range orphans {
		if node != nil {
			c.recorder.Eventf(node, corev1.EventTypeWarning, "OrphanVolume",
				"volume %s (%d bytes) is not referenced by any PV%s", vol.GetVolumeId(), vol.GetCapacityBytes(), c.keptNote(deleteOrphans, vol))
		}
		if !deleteOrphans {
			continue
		}
		if !c.released.seen(vol.GetVolumeId()) {
			klog.InfoS("Orphan volume kept", "volume", vol.GetVolumeId(), "reason", notSeenReleased)
			continue
		}
		if _, err := c.csi.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
			klog.ErrorS(err, "Deleting orphan volume failed", "volume", vol.GetVolumeId())
			continue
		}
		c.released.forget(vol.GetVolumeId())
		klog.InfoS("Deleted orphan volume", "volume", vol.GetVolumeId())
	}
	return nil
}

// responsibleForSegments: node volumes are this node's; zone volumes are
// the zone owner's.
func (c *Controller) responsibleForSegments(topologies []*csi.Topology) bool {
	for _, t := range topologies {
		if node, ok := t.GetSegments()[topology.NodeKey]; ok {
			return node == c.nodeName && c.role != RoleZone
		}
	}
	return c.zone.Holds()
}

// countOrphans sets the orphan gauge of the pools this Controller looks at.
func (c *Controller) countOrphans(orphans []*csi.Volume) {
	counts := map[string]int{}
	for _, vol := range orphans {
		pool := "zone"
		for _, t := range vol.GetAccessibleTopology() {
			if _, ok := t.GetSegments()[topology.NodeKey]; ok {
				pool = "node"
			}
		}
		counts[pool]++
	}
	if c.role != RoleZone {
		c.metrics.orphans.WithLabelValues("node").Set(float64(counts["node"]))
	}
	if c.role != RoleNode {
		c.metrics.orphans.WithLabelValues("zone").Set(float64(counts["zone"]))
	}
}

// listReferenced adds the handle of every PV of the driver that carries no
// route (the routed ones are in the cache), read from the API server a page
// at a time, to referenced.
func (c *Controller) listReferenced(ctx context.Context, referenced map[string]bool) error {
	options := metav1.ListOptions{Limit: 500, LabelSelector: "!" + route.Label}
	for {
		page, err := c.client.CoreV1().PersistentVolumes().List(ctx, options)
		if err != nil {
			return err
		}
		for i := range page.Items {
			if pv := &page.Items[i]; pv.Spec.CSI != nil && pv.Spec.CSI.Driver == c.driverName {
				referenced[pv.Spec.CSI.VolumeHandle] = true
			}
		}
		if options.Continue = page.Continue; options.Continue == "" {
			return nil
		}
	}
}

// notSeenReleased is why --delete-orphans keeps most orphans.
const notSeenReleased = "this node did not see its PV deleted while Released with reclaim policy Delete " +
	"(a Retain volume, or one whose PV vanished from a relist, as after an etcd restore, is only reported)"

// keptNote says, in an orphan's event, what --delete-orphans does with it.
func (c *Controller) keptNote(deleteOrphans bool, vol *csi.Volume) string {
	switch {
	case !deleteOrphans:
		return ""
	case c.released.seen(vol.GetVolumeId()):
		return "; deleting it (--delete-orphans)"
	}
	return "; kept: " + notSeenReleased
}

// releasedVolumes are the handles of PVs this node saw deleted (a watch
// event, not a relist) while Released with reclaim policy Delete, and made
// for their volume: the only orphans --delete-orphans deletes. That is a
// reclaim whose finalizer someone removed by hand. A PV turned Retain
// before it went, a PV gone from a relist (an etcd restored from an older
// backup), or one that vanished while this process was down leaves a
// volume that is only reported. Entries go when their volume is deleted,
// or after a day.
type releasedVolumes struct {
	mu      sync.Mutex
	handles map[string]time.Time
}

// releasedTTL bounds how long a seen release is remembered.
const releasedTTL = 24 * time.Hour

// note records a deleted PV's final state if it qualifies.
func (r *releasedVolumes) note(pv *corev1.PersistentVolume, driver string, now time.Time) {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver || pv.Annotations[AnnProvisionedBy] != driver ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
		pv.Status.Phase != corev1.VolumeReleased || !volumeid.CreatedUnder(pv.Spec.CSI.VolumeHandle, pv.Name) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handles == nil {
		r.handles = map[string]time.Time{}
	}
	for handle, at := range r.handles {
		if now.Sub(at) > releasedTTL {
			delete(r.handles, handle)
		}
	}
	r.handles[pv.Spec.CSI.VolumeHandle] = now
}

func (r *releasedVolumes) seen(handle string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.handles[handle]
	return ok
}

func (r *releasedVolumes) forget(handle string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.handles, handle)
}
