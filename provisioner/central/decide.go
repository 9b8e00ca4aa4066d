// Package central is toposnap-controller: the one place, leader-elected,
// that holds cluster-wide caches of claims, PVs, snapshots and contents. It
// decides once which node or zone acts on each of the driver's objects and
// routes it there with the toposnap.io/route label (internal/route), so a
// node agent watches its own objects only. It also releases source
// protection, which needs every claim to decide.
package central

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

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

// Decision is who acts on an object, or why nobody can.
type Decision struct {
	// Route is the route label's value; "" routes the object nowhere.
	Route string
	// Reason says, when Route is "", why no node or zone can act on an
	// object of the driver until a fact changes: selected node "node-7"
	// does not exist. It is "" when there is a route, when the object is
	// not (known to be) the driver's, and when it waits for what comes on
	// its own: the scheduler's choice of a node.
	Reason string
}

func routed(value string) Decision { return Decision{Route: value} }

func unroutable(format string, args ...any) Decision {
	return Decision{Reason: fmt.Sprintf(format, args...)}
}

// ClaimRoute is who acts on a claim: the node or zone that provisions it
// (the scheduler's selected node, the zone that took it, or for an
// Immediate zone claim a zone its class allows), then whoever owns its PV.
// current is the route it has now: a claim being provisioned
// (FinalizerProvisioning) keeps it, so the node making its volume is never
// cut off from it mid-way. No route: not the driver's, no decision yet, or
// (with a Reason) none possible.
func (r Router) ClaimRoute(claim *corev1.PersistentVolumeClaim) Decision {
	current := route.Of(claim.Labels)
	if current != "" && slices.Contains(claim.Finalizers, provisioner.FinalizerProvisioning) {
		return routed(current)
	}
	var volume Decision
	if claim.Spec.VolumeName != "" {
		if pv := r.Facts.PV(claim.Spec.VolumeName); pv != nil {
			if volume = r.VolumeRoute(pv); volume.Route != "" {
				return volume
			}
		}
	}
	decision := r.provisioningRoute(claim, current)
	if decision.Route == "" && volume.Reason != "" {
		// A bound claim follows its PV: the PV's reason is the one that counts.
		return unroutable("bound PV %q: %s", claim.Spec.VolumeName, volume.Reason)
	}
	return decision
}

// provisioningRoute is who provisions a claim, by its class and the
// scheduler's or a zone's annotations.
func (r Router) provisioningRoute(claim *corev1.PersistentVolumeClaim, current string) Decision {
	className := volumehelpers.GetPersistentVolumeClaimClass(claim)
	class := r.Facts.Class(className)
	if class == nil || class.Provisioner != r.Driver {
		if claim.Spec.VolumeName != "" {
			return routed(current) // bound to a PV not (yet) known: keep what it has
		}
		return Decision{}
	}
	if zone, ok := claim.Annotations[provisioner.AnnProvisioningZone]; ok && zone != "" {
		return routed(route.Zone(zone))
	}
	selected := claim.Annotations[provisioner.AnnSelectedNode]
	params, err := provisioner.DriverParameters(class)
	if err != nil {
		if selected != "" {
			return routed(route.Node(selected)) // that node tells the claim what is wrong with its class
		}
		if waitsForScheduler(class) {
			return Decision{}
		}
		return unroutable("%v", err) // it names the class
	}
	if params["scope"] != string(topology.ScopeZone) {
		if selected != "" {
			return routed(route.Node(selected))
		}
		if waitsForScheduler(class) {
			return Decision{}
		}
		return unroutable("storage class %q makes node-local volumes with Immediate binding: no node is ever selected to make one", className)
	}
	if selected != "" {
		labels := r.Facts.NodeLabels(selected)
		if labels == nil {
			return unroutable("selected node %q does not exist", selected)
		}
		location := topology.LocationFromLabels(selected, labels)
		if zone := route.ZoneOf(location.Region, location.Zone); zone != "" {
			return routed(route.Zone(zone))
		}
		return unroutable("selected node %q has no zone label (%s)", selected, topology.ZoneKey)
	}
	if waitsForScheduler(class) {
		return Decision{}
	}
	return r.immediateZone(claim, class)
}

// waitsForScheduler: a claim of a WaitForFirstConsumer class waits for the
// scheduler to select a node; one of an Immediate class never gets one.
func waitsForScheduler(class *storagev1.StorageClass) bool {
	return class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// immediateZone spreads Immediate zone claims over the zones their class
// allows, by a hash of the claim's uid: stable for one claim, so a restart
// of the central controller routes it the same way. Each zone that gave the
// claim back (AnnZoneAttempts) moves it on to the next allowed zone.
func (r Router) immediateZone(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) Decision {
	zones := r.Facts.Zones()
	var allowed []string
	for _, zone := range zones {
		if provisioner.AllowedOnNode(class, zoneLabels(zone)) {
			allowed = append(allowed, zone)
		}
	}
	if len(allowed) == 0 {
		if len(zones) == 0 {
			return unroutable("no node of the driver is in a zone")
		}
		return unroutable("storage class %q allows no zone that has nodes of the driver", class.Name)
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(claim.UID))
	attempts, err := strconv.ParseUint(claim.Annotations[provisioner.AnnZoneAttempts], 10, 32)
	if err != nil {
		attempts = 0
	}
	return routed(route.Zone(allowed[(uint64(h.Sum32())+attempts)%uint64(len(allowed))]))
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
// names, else the zone, else the pool owner its handle names.
func (r Router) VolumeRoute(pv *corev1.PersistentVolume) Decision {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.Driver {
		return Decision{}
	}
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		decision := r.handleRoute("volume handle", volumeid.KindVolume, pv.Spec.CSI.VolumeHandle)
		if decision.Route == "" {
			decision.Reason += " and the PV has no node affinity"
		}
		return decision
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
		return routed(got)
	}
	decision := r.handleRoute("volume handle", volumeid.KindVolume, pv.Spec.CSI.VolumeHandle)
	if decision.Route == "" {
		decision.Reason = fmt.Sprintf("the PV's node affinity names neither %s nor a zone, and %s", topology.NodeKey, decision.Reason)
	}
	return decision
}

// segmentRoute routes by a topology segment: its node, else its zone; ""
// when it names neither.
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

// handleRoute routes by the pool owner a volume or snapshot ID names;
// field names where the ID was found, for the reason when it names none.
func (r Router) handleRoute(field string, kind volumeid.Kind, handle string) Decision {
	id, err := volumeid.ParseID(handle)
	if err != nil {
		noun := "volume"
		if kind == volumeid.KindSnapshot {
			noun = "snapshot"
		}
		return unroutable("%s %q is not a toposnap %s ID", field, handle, noun)
	}
	node, zone := r.Facts.Owner(id.OwnerHash)
	switch {
	case id.Scope == topology.ScopeZone && zone != "":
		return routed(route.Zone(zone))
	case id.Scope == topology.ScopeNode && node != "":
		return routed(route.Node(node))
	case id.Scope == topology.ScopeZone:
		return unroutable("%s %q names the pool of a zone no node is in", field, handle)
	}
	return unroutable("%s %q names the pool of a node that does not exist", field, handle)
}

// SnapshotRoute is who acts on a VolumeSnapshot: where its content is
// routed, else where its source claim is. A snapshot whose content or
// claim is not cached is not known to be the driver's: it has no Reason.
func (r Router) SnapshotRoute(snap *snapv1.VolumeSnapshot) Decision {
	var reasons []string
	if snap.Status != nil && snap.Status.BoundVolumeSnapshotContentName != nil {
		name := *snap.Status.BoundVolumeSnapshotContentName
		if content := r.Facts.Content(name); content != nil {
			got := r.ContentRoute(content)
			if got.Route != "" {
				return got
			}
			if got.Reason != "" {
				reasons = append(reasons, fmt.Sprintf("bound content %q: %s", name, got.Reason))
			}
		}
	}
	if name := snap.Spec.Source.VolumeSnapshotContentName; name != nil {
		content := r.Facts.Content(*name)
		if content == nil {
			return Decision{}
		}
		got := r.ContentRoute(content)
		if got.Route == "" && got.Reason != "" {
			return unroutable("content %q: %s", *name, got.Reason)
		}
		return got
	}
	if name := snap.Spec.Source.PersistentVolumeClaimName; name != nil {
		if claim := r.Facts.Claim(snap.Namespace, *name); claim != nil {
			got := r.ClaimRoute(claim)
			if got.Route != "" {
				return got
			}
			if got.Reason != "" {
				reasons = append(reasons, fmt.Sprintf("source claim %q: %s", *name, got.Reason))
			}
		}
	}
	return because(reasons)
}

// ContentRoute is who acts on a content of the driver: where its snapshot
// lives (the accessible-topology annotation), else where its source volume
// is, else the pool its snapshot handle names.
func (r Router) ContentRoute(content *snapv1.VolumeSnapshotContent) Decision {
	if content.Spec.Driver != r.Driver {
		return Decision{}
	}
	var reasons []string
	if annotation := content.Annotations[topology.AnnAccessibleTopology]; annotation != "" {
		segments, err := topology.DecodeSegments(annotation)
		switch {
		case err != nil:
			reasons = append(reasons, fmt.Sprintf("annotation %s is unreadable: %v", topology.AnnAccessibleTopology, err))
		case len(segments) > 0:
			if got := r.segmentRoute(segments[0]); got != "" {
				return routed(got)
			}
			reasons = append(reasons, fmt.Sprintf("annotation %s names neither a node nor a zone", topology.AnnAccessibleTopology))
		}
	}
	if handle := content.Spec.Source.VolumeHandle; handle != nil {
		if pv := r.Facts.PVByHandle(*handle); pv != nil {
			if got := r.VolumeRoute(pv); got.Route != "" {
				return got
			}
		}
		// A source PV that cannot be routed failed on this same handle:
		// the reason names the handle once.
		got := r.handleRoute("source volume handle", volumeid.KindVolume, *handle)
		if got.Route != "" {
			return got
		}
		reasons = append(reasons, got.Reason)
	}
	if handle := content.Spec.Source.SnapshotHandle; handle != nil {
		return withReasons(r.handleRoute("snapshot handle", volumeid.KindSnapshot, *handle), reasons)
	}
	if content.Status != nil && content.Status.SnapshotHandle != nil {
		return withReasons(r.handleRoute("status snapshot handle", volumeid.KindSnapshot, *content.Status.SnapshotHandle), reasons)
	}
	if len(reasons) == 0 {
		return unroutable("its source names neither a volume handle nor a snapshot handle")
	}
	return because(reasons)
}

// withReasons is decision, its reason after the earlier reasons why the
// object could not be routed.
func withReasons(decision Decision, earlier []string) Decision {
	if decision.Route != "" || len(earlier) == 0 {
		return decision
	}
	return because(append(earlier, decision.Reason))
}

// because is no route, for these reasons ("" for none).
func because(reasons []string) Decision {
	return Decision{Reason: strings.Join(reasons, "; ")}
}
