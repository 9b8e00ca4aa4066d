package driver

import (
	"fmt"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/toposnap/toposnap/internal/topology"
)

// cluster3 is node1 and node2 in zone cn-hangzhou-b sharing one zone pool,
// and node3 alone in zone cn-hangzhou-c with its own.
type cluster3 struct {
	node1, node2, node3 *harness
}

func startCluster3(t *testing.T) *cluster3 {
	t.Helper()
	zoneB, zoneC := t.TempDir(), t.TempDir()
	return &cluster3{
		node1: startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", zoneB),
		node2: startDriver(t, "node2", "cn-hangzhou-b", "cn-hangzhou", zoneB),
		node3: startDriver(t, "node3", "cn-hangzhou-c", "cn-hangzhou", zoneC),
	}
}

func seg(pairs ...string) *csi.Topology {
	s := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		s[pairs[i]] = pairs[i+1]
	}
	return &csi.Topology{Segments: s}
}

func nodeSeg(node, zone string) *csi.Topology {
	return seg(topology.NodeKey, node, topology.ZoneKey, zone, topology.RegionKey, "cn-hangzhou")
}

var (
	node1Seg = nodeSeg("node1", "cn-hangzhou-b")
	node2Seg = nodeSeg("node2", "cn-hangzhou-b")
	node3Seg = nodeSeg("node3", "cn-hangzhou-c")
	zoneBSeg = seg(topology.ZoneKey, "cn-hangzhou-b", topology.RegionKey, "cn-hangzhou")
	zoneCSeg = seg(topology.ZoneKey, "cn-hangzhou-c", topology.RegionKey, "cn-hangzhou")
)

func volumeRequest(name, scope string, size int64, requisite, preferred []*csi.Topology) *csi.CreateVolumeRequest {
	req := &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap()},
		Parameters:         map[string]string{"scope": scope},
	}
	if requisite != nil || preferred != nil {
		req.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: requisite, Preferred: preferred}
	}
	return req
}

func topologies(ts ...*csi.Topology) []*csi.Topology { return ts }

// TestCreateVolumeTopology is the topology conformance table: for each
// requisite/preferred combination, the CSI spec's answer and, on success,
// where the volume is reachable from.
func TestCreateVolumeTopology(t *testing.T) {
	c := startCluster3(t)
	noZonePool := startDriver(t, "node4", "cn-hangzhou-b", "cn-hangzhou", "")
	tests := []struct {
		name      string
		on        *harness
		scope     string
		requisite []*csi.Topology
		preferred []*csi.Topology
		want      codes.Code
		wantTopo  *csi.Topology
	}{
		{"node scope without requirements lands on this node", c.node1, "node", nil, nil, codes.OK, seg(topology.NodeKey, "node1")},
		{"node scope requisite this node", c.node1, "node", topologies(node1Seg), nil, codes.OK, seg(topology.NodeKey, "node1")},
		{"node scope requisite other node is refused", c.node1, "node", topologies(node2Seg), nil, codes.ResourceExhausted, nil},
		{"node scope requisite other zone is refused", c.node1, "node", topologies(node3Seg), nil, codes.ResourceExhausted, nil},
		{"node scope requisite lists this node after others", c.node1, "node", topologies(node2Seg, node3Seg, node1Seg), topologies(node2Seg), codes.OK, seg(topology.NodeKey, "node1")},
		{"node scope preferred other node only is a preference", c.node1, "node", nil, topologies(node2Seg), codes.OK, seg(topology.NodeKey, "node1")},
		{"node scope cannot promise a whole zone", c.node1, "node", topologies(zoneBSeg), nil, codes.ResourceExhausted, nil},
		{"node scope requisite with node key only", c.node1, "node", topologies(seg(topology.NodeKey, "node1")), nil, codes.OK, seg(topology.NodeKey, "node1")},
		{"unknown topology key is refused", c.node1, "node", topologies(seg(topology.NodeKey, "node1", "rack", "rack1")), nil, codes.ResourceExhausted, nil},
		{"zone scope requisite other node of the zone", c.node1, "zone", topologies(node2Seg), nil, codes.OK, zoneBSeg},
		{"zone scope requisite the zone", c.node1, "zone", topologies(zoneBSeg), nil, codes.OK, zoneBSeg},
		{"zone scope requisite other zone is refused", c.node1, "zone", topologies(zoneCSeg), nil, codes.ResourceExhausted, nil},
		{"zone scope requisite other region is refused", c.node1, "zone", topologies(seg(topology.ZoneKey, "cn-hangzhou-b", topology.RegionKey, "cn-beijing")), nil, codes.ResourceExhausted, nil},
		{"zone scope on a node of zone c", c.node3, "zone", topologies(node1Seg, node3Seg), topologies(node1Seg), codes.OK, zoneCSeg},
		{"zone scope on a node without zone pool is refused", noZonePool, "zone", nil, nil, codes.ResourceExhausted, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := tt.on.controller.CreateVolume(ctxT(t), volumeRequest(fmt.Sprintf("topo-%d", i), tt.scope, 1<<20, tt.requisite, tt.preferred))
			if status.Code(err) != tt.want {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tt.want)
			}
			if tt.want != codes.OK {
				return
			}
			got := resp.GetVolume().GetAccessibleTopology()
			if len(got) != 1 || !proto.Equal(got[0], tt.wantTopo) {
				t.Fatalf("accessible topology = %v, want [%v]", got, tt.wantTopo)
			}
		})
	}
}

// TestSourceTopology: a restore or clone is served only where its source is
// reachable; elsewhere the answer is RESOURCE_EXHAUSTED, never NOT_FOUND.
func TestSourceTopology(t *testing.T) {
	c := startCluster3(t)
	ctx := ctxT(t)
	nodeVol := mustCreate(t, c.node2, volumeRequest("src-node", "node", 1<<20, topologies(node2Seg), nil))
	zoneVol := mustCreate(t, c.node2, volumeRequest("src-zone", "zone", 1<<20, topologies(zoneBSeg), nil))
	nodeSnap := mustSnapshot(t, c.node2, "snap-node", nodeVol)
	zoneSnap := mustSnapshot(t, c.node2, "snap-zone", zoneVol)

	fromSnapshot := func(id string) *csi.VolumeContentSource {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	fromVolume := func(id string) *csi.VolumeContentSource {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	}
	tests := []struct {
		name      string
		on        *harness
		scope     string
		requisite []*csi.Topology
		source    *csi.VolumeContentSource
		want      codes.Code
	}{
		{"restore node snapshot on its node", c.node2, "node", topologies(node2Seg), fromSnapshot(nodeSnap), codes.OK},
		{"restore node snapshot from another node's pool", c.node1, "node", topologies(node1Seg), fromSnapshot(nodeSnap), codes.ResourceExhausted},
		{"restore node snapshot in another zone", c.node3, "node", topologies(node3Seg), fromSnapshot(nodeSnap), codes.ResourceExhausted},
		{"restore zone snapshot on another node of the zone", c.node1, "zone", topologies(node1Seg), fromSnapshot(zoneSnap), codes.OK},
		{"restore zone snapshot into a node volume of the zone", c.node1, "node", topologies(node1Seg), fromSnapshot(zoneSnap), codes.OK},
		{"restore zone snapshot in another zone", c.node3, "zone", topologies(node3Seg), fromSnapshot(zoneSnap), codes.ResourceExhausted},
		{"clone node volume from another node", c.node1, "node", topologies(node1Seg), fromVolume(nodeVol), codes.ResourceExhausted},
		{"clone zone volume on another node of the zone", c.node1, "zone", topologies(node1Seg), fromVolume(zoneVol), codes.OK},
		{"restore unknown snapshot of this node", c.node2, "node", nil, fromSnapshot(c.node2.driver.nodePool.SnapshotID("never-cut")), codes.NotFound},
		{"restore malformed snapshot id", c.node2, "node", nil, fromSnapshot("../../etc"), codes.NotFound},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := volumeRequest(fmt.Sprintf("restore-%d", i), tt.scope, 1<<20, tt.requisite, nil)
			req.VolumeContentSource = tt.source
			_, err := tt.on.controller.CreateVolume(ctx, req)
			if status.Code(err) != tt.want {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tt.want)
			}
		})
	}
}

// TestCapacityTopology: GetCapacity answers per segment, and a full pool
// refuses with RESOURCE_EXHAUSTED while a request larger than the whole pool
// is OUT_OF_RANGE.
func TestCapacityTopology(t *testing.T) {
	c := startCluster3(t)
	ctx := ctxT(t)
	capacity := func(h *harness, scope string, at *csi.Topology) int64 {
		t.Helper()
		resp, err := h.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"scope": scope}, AccessibleTopology: at})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAvailableCapacity()
	}
	if got := capacity(c.node1, "node", node1Seg); got != 1<<30 {
		t.Errorf("node1 capacity for itself = %d, want %d", got, 1<<30)
	}
	if got := capacity(c.node1, "node", node2Seg); got != 0 {
		t.Errorf("node1 capacity for node2 = %d, want 0", got)
	}
	mustCreate(t, c.node2, volumeRequest("zone-fill", "zone", 256<<20, nil, nil))
	if got := capacity(c.node1, "zone", zoneBSeg); got != 768<<20 {
		t.Errorf("zone b capacity seen from node1 after node2 took 256Mi = %d, want %d", got, 768<<20)
	}
	if got := capacity(c.node3, "zone", zoneBSeg); got != 0 {
		t.Errorf("node3 capacity for zone b = %d, want 0", got)
	}

	mustCreate(t, c.node1, volumeRequest("fill", "node", 1<<30-1<<20, nil, nil))
	_, err := c.node1.controller.CreateVolume(ctx, volumeRequest("one-too-many", "node", 2<<20, nil, nil))
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("full pool: code = %v (%v), want ResourceExhausted", status.Code(err), err)
	}
	_, err = c.node1.controller.CreateVolume(ctx, volumeRequest("too-big", "node", 2<<30, nil, nil))
	if status.Code(err) != codes.OutOfRange {
		t.Errorf("larger than the pool: code = %v (%v), want OutOfRange", status.Code(err), err)
	}
}

func mustCreate(t *testing.T, h *harness, req *csi.CreateVolumeRequest) string {
	t.Helper()
	resp, err := h.controller.CreateVolume(ctxT(t), req)
	if err != nil {
		t.Fatalf("create volume %s: %v", req.GetName(), err)
	}
	return resp.GetVolume().GetVolumeId()
}

func mustSnapshot(t *testing.T, h *harness, name, volumeID string) string {
	t.Helper()
	resp, err := h.controller.CreateSnapshot(ctxT(t), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID})
	if err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
	if !resp.GetSnapshot().GetReadyToUse() {
		t.Fatalf("snapshot %s of a small volume not ready within the wait", name)
	}
	return resp.GetSnapshot().GetSnapshotId()
}
