package provisioner

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumerecord"
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
	// The PV cache reflects at least this version: a volume whose claim is
	// newer was made after the list it is compared with (volumerecord).
	listed := c.volumesVersion()
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
	c.metrics.orphans.Set(float64(len(orphans)))
	node, _ := c.nodes.Get(c.nodeName)
	for _, vol := range orphans {
		if node != nil {
			c.recorder.Eventf(node, corev1.EventTypeWarning, "OrphanVolume",
				"volume %s (%d bytes) is not referenced by any PV%s", vol.GetVolumeId(), vol.GetCapacityBytes(), keptNote(deleteOrphans, vol, listed))
		}
		if !deleteOrphans {
			continue
		}
		if kept := volumerecord.DeletableOrphan(vol.GetVolumeContext(), listed); kept != "" {
			klog.InfoS("Orphan volume kept", "volume", vol.GetVolumeId(), "reason", kept)
			continue
		}
		if _, err := c.csi.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
			klog.ErrorS(err, "Deleting orphan volume failed", "volume", vol.GetVolumeId())
			continue
		}
		klog.InfoS("Deleted orphan volume", "volume", vol.GetVolumeId())
	}
	return nil
}

// responsibleForSegments: node volumes are this node's; zone volumes are
// the zone owner's.
func (c *Controller) responsibleForSegments(topologies []*csi.Topology) bool {
	for _, t := range topologies {
		if node, ok := t.GetSegments()[topology.NodeKey]; ok {
			return node == c.nodeName
		}
	}
	return c.zone.Holds()
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

// keptNote says, in an orphan's event, why --delete-orphans keeps it.
func keptNote(deleteOrphans bool, vol *csi.Volume, listed string) string {
	if !deleteOrphans {
		return ""
	}
	if kept := volumerecord.DeletableOrphan(vol.GetVolumeContext(), listed); kept != "" {
		return "; kept: " + kept
	}
	return "; deleting it (--delete-orphans)"
}
