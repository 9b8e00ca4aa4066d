package topology

import "testing"

func TestReaches(t *testing.T) {
	here := Location{Node: "node1", Zone: "b", Region: "r"}
	tests := []struct {
		name      string
		scope     Scope
		requested Segment
		want      bool
	}{
		{"node volume, this node's full segment", ScopeNode, Segment{NodeKey: "node1", ZoneKey: "b", RegionKey: "r"}, true},
		{"node volume, this node by id only", ScopeNode, Segment{NodeKey: "node1"}, true},
		{"node volume, other node", ScopeNode, Segment{NodeKey: "node2", ZoneKey: "b", RegionKey: "r"}, false},
		{"node volume, whole zone", ScopeNode, Segment{ZoneKey: "b"}, false},
		{"node volume, this node but wrong zone", ScopeNode, Segment{NodeKey: "node1", ZoneKey: "c"}, false},
		{"zone volume, other node of the zone", ScopeZone, Segment{NodeKey: "node2", ZoneKey: "b", RegionKey: "r"}, true},
		{"zone volume, the zone", ScopeZone, Segment{ZoneKey: "b"}, true},
		{"zone volume, this node by id only", ScopeZone, Segment{NodeKey: "node1"}, true},
		{"zone volume, other node by id only (zone unknown)", ScopeZone, Segment{NodeKey: "node2"}, false},
		{"zone volume, other zone", ScopeZone, Segment{ZoneKey: "c"}, false},
		{"zone volume, other region", ScopeZone, Segment{ZoneKey: "b", RegionKey: "q"}, false},
		{"zone volume, region only", ScopeZone, Segment{RegionKey: "r"}, false},
		{"unknown key", ScopeNode, Segment{NodeKey: "node1", "rack": "rack1"}, false},
		{"empty segment", ScopeNode, Segment{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := here.Reaches(tt.scope, tt.requested); got != tt.want {
				t.Fatalf("Reaches(%s, %v) = %v, want %v", tt.scope, tt.requested, got, tt.want)
			}
		})
	}
}

func TestZoneVolumeNeedsKnownZone(t *testing.T) {
	noZone := Location{Node: "node1"}
	if noZone.Reaches(ScopeZone, Segment{NodeKey: "node1"}) {
		t.Fatal("a node without a zone claims to serve zone volumes")
	}
}

func TestLocationFromLabels(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   Location
	}{
		{"GA keys", map[string]string{ZoneKey: "b", RegionKey: "r"}, Location{Node: "n", Zone: "b", Region: "r"}},
		{"legacy keys", map[string]string{LegacyZoneKey: "b", LegacyRegionKey: "r"}, Location{Node: "n", Zone: "b", Region: "r"}},
		{"GA wins over legacy", map[string]string{ZoneKey: "b", LegacyZoneKey: "old"}, Location{Node: "n", Zone: "b"}},
		{"no labels", nil, Location{Node: "n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LocationFromLabels("n", tt.labels); got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSegments(t *testing.T) {
	loc := Location{Node: "n", Zone: "b", Region: "r"}
	if got := loc.VolumeSegment(ScopeNode).String(); got != "{topology.toposnap.io/node=n}" {
		t.Errorf("node volume segment = %s", got)
	}
	if got := loc.VolumeSegment(ScopeZone).String(); got != "{topology.kubernetes.io/region=r, topology.kubernetes.io/zone=b}" {
		t.Errorf("zone volume segment = %s", got)
	}
	if !Contains(map[string]string{ZoneKey: "b", "other": "x"}, Segment{ZoneKey: "b"}) {
		t.Error("node labels containing the segment not recognised")
	}
	if _, err := ParseScope("rack"); err == nil {
		t.Error("scope=rack accepted")
	}
}
