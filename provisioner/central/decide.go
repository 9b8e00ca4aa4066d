// Package central is toposnap-controller: the one place, leader-elected,
// that holds cluster-wide caches of claims, PVs, snapshots and contents. It
// decides once which node or zone acts on each of the driver's objects and
// routes it there with the toposnap.io/route label (internal/route), so a
// node agent watches its own objects only. It also releases source
// protection, which needs every claim to decide.
package central

import (
	"hash/fnv"
	"slices"
	"strconv"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	volumehelpers "k8s.io/component-helpers/storage/volume"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
	"github.com/toposnap/toposnap/provisioner"
)

// Facts are what routing reads: the central controller's caches, or a
// table in tests. Lookups answer nil or "" when the object is unknown.
type Facts interface {
	Class(name string) *storagev1.StorageClass
	PV(name string) *corev1.PersistentVolume
	PVByHandle(handle string) *corev1.PersistentVolume
	Claim(namespace, name string) *corev1.PersistentVolumeClaim
	Content(name string) *snapv1.VolumeSnapshotContent
	// NodeLabels are a Node's labels; nil when there is no such Node.
	NodeLabels(name string) map[string]string
	// NodeByID names the Node whose driver has this topology node id; ""
	// when no Node carries it.
	NodeByID(id string) string
	// Owner names the pool owner whose hash an ID carries: a node's name,
	// or a zone as "region/zone".
	Owner(hash string) (node, zone string)
	// Zones lists every zone nodes are in, as "region/zone", sorted.
	Zones() []string
}

// Router decides routes for one driver's objects.
type Router struct {
	Driver string
	Facts  Facts
}

// ClaimRoute is who acts on a claim: the node or zone that provisions it
// (the scheduler's selected node, the zone that took it, or for an
// Immediate zone claim a zone its class allows), then whoever owns its PV.
// current is the route it has now: a claim being provisioned
// (FinalizerProvisioning) keeps it, so the node making its volume is never
// cut off from it mid-way. "" routes it nowhere (not the driver's, or no
// decision yet).
func (r Router) ClaimRoute(claim *corev1.PersistentVolumeClaim) string {
	current := route.Of(claim.Labels)
	if current != "" && slices.Contains(claim.Finalizers, provisioner.FinalizerProvisioning) {
		return current
	}
	if claim.Spec.VolumeName != "" {
		if pv := r.Facts.PV(claim.Spec.VolumeName); pv != nil {
			if pvRoute := r.VolumeRoute(pv); pvRoute != "" {
				return pvRoute
			}
		}
	}
	class := r.Facts.Class(volumehelpers.GetPersistentVolumeClaimClass(claim))
	if class == nil || class.Provisioner != r.Driver {
		if claim.Spec.VolumeName != "" {
			return current // bound to a PV not (yet) known: keep what it has
		}
		return ""
	}
	if zone, ok := claim.Annotations[provisioner.AnnProvisioningZone]; ok && zone != "" {
		return route.Zone(zone)
	}
	selected := claim.Annotations[provisioner.AnnSelectedNode]
	params, err := provisioner.DriverParameters(class)
	if err != nil {
		if selected != "" {
			return route.Node(selected) // that node tells the claim what is wrong with its class
		}
		return ""
	}
	if params["scope"] != string(topology.ScopeZone) {
		if selected == "" {
			return ""
		}
		return route.Node(selected)
	}
	if selected != "" {
		labels := r.Facts.NodeLabels(selected)
		if labels == nil {
			return ""
		}
		location := topology.LocationFromLabels(selected, labels)
		if zone := route.ZoneOf(location.Region, location.Zone); zone != "" {
			return route.Zone(zone)
		}
		return ""
	}
	if class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
		return "" // the scheduler has not chosen yet
	}
	return r.immediateZone(claim, class)
}

// immediateZone spreads Immediate zone claims over the zones their class
// allows, by a hash of the claim's uid: stable for one claim, so a restart
// of the central controller routes it the same way. Each zone that gave the
// claim back (AnnZoneAttempts) moves it on to the next allowed zone.
func (r Router) immediateZone(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) string {
	var allowed []string
	for _, zone := range r.Facts.Zones() {
		if provisioner.AllowedOnNode(class, zoneLabels(zone)) {
			allowed = append(allowed, zone)
		}
	}
	if len(allowed) == 0 {
		return ""
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(claim.UID))
	attempts, err := strconv.ParseUint(claim.Annotations[provisioner.AnnZoneAttempts], 10, 32)
	if err != nil {
		attempts = 0
	}
	return route.Zone(allowed[(uint64(h.Sum32())+attempts)%uint64(len(allowed))])
}

// zoneLabels are the labels every node of a "region/zone" shares.
func zoneLabels(zone string) map[string]string {
	for i := range len(zone) {
		if zone[i] == '/' {
			labels := map[string]string{topology.ZoneKey: zone[i+1:]}
			if zone[:i] != "" {
				labels[topology.RegionKey] = zone[:i]
			}
			return labels
		}
	}
	return map[string]string{topology.ZoneKey: zone}
}

// VolumeRoute is who acts on a PV of the driver: the node its affinity
// names, else the zone.
func (r Router) VolumeRoute(pv *corev1.PersistentVolume) string {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.Driver {
		return ""
	}
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return r.handleRoute(pv.Spec.CSI.VolumeHandle)
	}
	segment := topology.Segment{}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if expr.Operator == corev1.NodeSelectorOpIn && len(expr.Values) == 1 {
				segment[expr.Key] = expr.Values[0]
			}
		}
	}
	if got := r.segmentRoute(segment); got != "" {
		return got
	}
	return r.handleRoute(pv.Spec.CSI.VolumeHandle)
}

// segmentRoute routes by a topology segment: its node, else its zone.
func (r Router) segmentRoute(segment topology.Segment) string {
	if id := segment[topology.NodeKey]; id != "" {
		if node := r.Facts.NodeByID(id); node != "" {
			return route.Node(node)
		}
		return route.Node(id) // the driver's default node id is the Node's name
	}
	if zone := route.ZoneOf(segment[topology.RegionKey], segment[topology.ZoneKey]); zone != "" {
		return route.Zone(zone)
	}
	return ""
}

// handleRoute routes by the pool owner a volume or snapshot ID names.
func (r Router) handleRoute(handle string) string {
	id, err := volumeid.ParseID(handle)
	if err != nil {
		return ""
	}
	node, zone := r.Facts.Owner(id.OwnerHash)
	switch {
	case id.Scope == topology.ScopeZone && zone != "":
		return route.Zone(zone)
	case id.Scope == topology.ScopeNode && node != "":
		return route.Node(node)
	}
	return ""
}

// SnapshotRoute is who acts on a VolumeSnapshot: where its content is
// routed, else where its source claim is.
func (r Router) SnapshotRoute(snap *snapv1.VolumeSnapshot) string {
	if snap.Status != nil && snap.Status.BoundVolumeSnapshotContentName != nil {
		if content := r.Facts.Content(*snap.Status.BoundVolumeSnapshotContentName); content != nil {
			if got := r.ContentRoute(content); got != "" {
				return got
			}
		}
	}
	if name := snap.Spec.Source.VolumeSnapshotContentName; name != nil {
		if content := r.Facts.Content(*name); content != nil {
			return r.ContentRoute(content)
		}
		return ""
	}
	if name := snap.Spec.Source.PersistentVolumeClaimName; name != nil {
		if claim := r.Facts.Claim(snap.Namespace, *name); claim != nil {
			return r.ClaimRoute(claim)
		}
	}
	return ""
}

// ContentRoute is who acts on a content of the driver: where its snapshot
// lives (the accessible-topology annotation), else where its source volume
// is, else the pool its snapshot handle names.
func (r Router) ContentRoute(content *snapv1.VolumeSnapshotContent) string {
	if content.Spec.Driver != r.Driver {
		return ""
	}
	if annotation := content.Annotations[topology.AnnAccessibleTopology]; annotation != "" {
		if segments, err := topology.DecodeSegments(annotation); err == nil && len(segments) > 0 {
			if got := r.segmentRoute(segments[0]); got != "" {
				return got
			}
		}
	}
	if handle := content.Spec.Source.VolumeHandle; handle != nil {
		if pv := r.Facts.PVByHandle(*handle); pv != nil {
			if got := r.VolumeRoute(pv); got != "" {
				return got
			}
		}
		if got := r.handleRoute(*handle); got != "" {
			return got
		}
	}
	if handle := content.Spec.Source.SnapshotHandle; handle != nil {
		return r.handleRoute(*handle)
	}
	if content.Status != nil && content.Status.SnapshotHandle != nil {
		return r.handleRoute(*content.Status.SnapshotHandle)
	}
	return ""
}
