// Package topology owns toposnap's idea of "where": the topology keys, the
// segments a node or a volume sits in, and the rules for matching a requested
// segment against a location. The driver, the provisioner, the extender and
// the webhook all decide reachability through this package, so they agree.
package topology

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Well-known keys. NodeKey is toposnap's own; the zone and region keys are
// Kubernetes' and are copied from the node's labels.
const (
	NodeKey   = "topology.toposnap.io/node"
	ZoneKey   = "topology.kubernetes.io/zone"
	RegionKey = "topology.kubernetes.io/region"
	// Legacy label keys, accepted as aliases when reading a node's labels.
	LegacyZoneKey   = "failure-domain.beta.kubernetes.io/zone"
	LegacyRegionKey = "failure-domain.beta.kubernetes.io/region"
	HostnameKey     = "kubernetes.io/hostname"
)

// Scope says which pool a volume lives in.
type Scope string

const (
	// ScopeNode volumes live on one node's disk and are reachable from that node only.
	ScopeNode Scope = "node"
	// ScopeZone volumes live in the zone's shared pool, reachable from every node of the zone.
	ScopeZone Scope = "zone"
)

// ParseScope reads the StorageClass parameter `scope`; empty means node.
func ParseScope(value string) (Scope, error) {
	switch Scope(value) {
	case "", ScopeNode:
		return ScopeNode, nil
	case ScopeZone:
		return ScopeZone, nil
	}
	return "", fmt.Errorf("parameter scope=%q: must be %q or %q", value, ScopeNode, ScopeZone)
}

// Segment is a set of topology key/value pairs, as in CSI's Topology.segments.
type Segment map[string]string

// String renders a segment deterministically, e.g. "{zone=a, region=r}".
func (s Segment) String() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+s[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// Location is where one node is: its id and, when known, zone and region.
type Location struct {
	Node   string
	Zone   string
	Region string
}

// LocationFromLabels reads a node's zone and region from its labels, preferring
// the GA keys and falling back to the legacy failure-domain ones.
func LocationFromLabels(nodeID string, labels map[string]string) Location {
	loc := Location{Node: nodeID, Zone: labels[ZoneKey], Region: labels[RegionKey]}
	if loc.Zone == "" {
		loc.Zone = labels[LegacyZoneKey]
	}
	if loc.Region == "" {
		loc.Region = labels[LegacyRegionKey]
	}
	return loc
}

// NodeSegment is every key this location can be addressed by, as reported in
// NodeGetInfo's accessible_topology.
func (l Location) NodeSegment() Segment {
	seg := Segment{NodeKey: l.Node}
	if l.Zone != "" {
		seg[ZoneKey] = l.Zone
	}
	if l.Region != "" {
		seg[RegionKey] = l.Region
	}
	return seg
}

// VolumeSegment is where a volume of the given scope created at this location
// is reachable from: the node for node scope, the zone (and region) for zone scope.
func (l Location) VolumeSegment(scope Scope) Segment {
	if scope == ScopeZone {
		seg := Segment{ZoneKey: l.Zone}
		if l.Region != "" {
			seg[RegionKey] = l.Region
		}
		return seg
	}
	return Segment{NodeKey: l.Node}
}

// Reaches reports whether a volume of the given scope created at this location
// is reachable from every node the requested segment describes. A node-scope
// volume needs the segment to name this node; a zone-scope volume needs it to
// name this zone (any node of it), or this node. Every zone and region key
// must agree with this location; unknown keys never match.
func (l Location) Reaches(scope Scope, requested Segment) bool {
	if len(requested) == 0 {
		return false
	}
	_, hasZone := requested[ZoneKey]
	for key, value := range requested {
		switch key {
		case NodeKey:
			// Another node of the same zone reaches a zone-scope volume; the
			// zone key says whether it is the same zone.
			if value != l.Node && (scope != ScopeZone || !hasZone) {
				return false
			}
		case ZoneKey:
			if l.Zone == "" || value != l.Zone {
				return false
			}
		case RegionKey:
			if l.Region == "" || value != l.Region {
				return false
			}
		default:
			return false
		}
	}
	if scope == ScopeZone {
		_, hasNode := requested[NodeKey]
		return l.Zone != "" && (hasZone || hasNode)
	}
	_, hasNode := requested[NodeKey]
	return hasNode
}

// ReachesAny reports whether any of the requested segments is reachable; it
// also returns the first such segment.
func (l Location) ReachesAny(scope Scope, requested []Segment) (Segment, bool) {
	for _, seg := range requested {
		if l.Reaches(scope, seg) {
			return seg, true
		}
	}
	return nil, false
}

// Contains reports whether a node with these labels lies in the segment:
// every key/value pair of the segment is also one of the labels.
func Contains(labels map[string]string, inner Segment) bool {
	for k, v := range inner {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// AnnAccessibleTopology on a VolumeSnapshotContent records where its
// snapshot can be restored: a JSON list of segments.
const AnnAccessibleTopology = "toposnap.io/accessible-topology"

// EncodeSegments renders segments as the annotation's JSON.
func EncodeSegments(segments []Segment) (string, error) {
	if segments == nil {
		segments = []Segment{}
	}
	data, err := json.Marshal(segments)
	if err != nil {
		return "", fmt.Errorf("encode segments: %w", err)
	}
	return string(data), nil
}

// DecodeSegments reads the annotation's JSON back.
func DecodeSegments(value string) ([]Segment, error) {
	var segments []Segment
	if err := json.Unmarshal([]byte(value), &segments); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnAccessibleTopology, err)
	}
	return segments, nil
}

// ReachableFrom reports whether a node with these labels lies in any of
// the segments.
func ReachableFrom(labels map[string]string, segments []Segment) bool {
	for _, seg := range segments {
		if Contains(labels, seg) {
			return true
		}
	}
	return false
}
