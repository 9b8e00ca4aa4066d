// Package fakecsi is an in-memory CSI controller served over real gRPC (an
// in-process connection), for controllers' unit tests: volumes and
// snapshots by name, idempotent like a real driver, with scripted failures
// and a record of every call.
package fakecsi

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
)

// Fault is a scripted failure of one call.
type Fault struct {
	Err error
	// After: the call does its work first, then fails (a timeout after the
	// driver acted).
	After bool
}

// Server is the fake driver's controller service.
type Server struct {
	csi.UnimplementedControllerServer
	mu        sync.Mutex
	volumes   map[string]*csi.Volume   // by CSI name
	snapshots map[string]*csi.Snapshot // by CSI name
	faults    map[string][]Fault       // by method name, used in order
	calls     []string
}

// Start serves a new fake for the test's lifetime and returns a client.
func Start(t testing.TB) (*Server, csi.ControllerClient) {
	t.Helper()
	server := &Server{volumes: map[string]*csi.Volume{}, snapshots: map[string]*csi.Snapshot{}, faults: map[string][]Fault{}}
	listener := bufconn.Listen(1 << 20)
	grpcServer := grpc.NewServer()
	csi.RegisterControllerServer(grpcServer, server)
	go func() { _ = grpcServer.Serve(listener) }()
	conn, err := grpc.NewClient("passthrough:///fakecsi",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return listener.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(); grpcServer.Stop() })
	return server, csi.NewControllerClient(conn)
}

// Fail scripts the next calls of method ("CreateVolume", …) to fail.
func (s *Server) Fail(method string, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[method] = append(s.faults[method], faults...)
}

// Calls returns the methods called so far, in order.
func (s *Server) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// Count returns how many times method was called.
func (s *Server) Count(method string) int {
	n := 0
	for _, call := range s.Calls() {
		if call == method {
			n++
		}
	}
	return n
}

// VolumeIDs returns the IDs of the volumes that exist.
func (s *Server) VolumeIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, volume := range s.volumes {
		ids = append(ids, volume.VolumeId)
	}
	return ids
}

// SnapshotIDs returns the IDs of the snapshots that exist.
func (s *Server) SnapshotIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, snapshot := range s.snapshots {
		ids = append(ids, snapshot.SnapshotId)
	}
	return ids
}

// AddVolume makes a volume exist, as if created earlier.
func (s *Server) AddVolume(name string, segments map[string]string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	volume := &csi.Volume{VolumeId: VolumeID(name), CapacityBytes: 1 << 20, AccessibleTopology: []*csi.Topology{{Segments: segments}}}
	s.volumes[name] = volume
	return volume.VolumeId
}

// AddSnapshot makes a snapshot exist, as if cut earlier.
func (s *Server) AddSnapshot(name, sourceVolumeID string, segments map[string]string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	snapshot := &csi.Snapshot{SnapshotId: SnapshotID(name), SourceVolumeId: sourceVolumeID, ReadyToUse: true, SizeBytes: 1 << 20,
		AccessibleTopology: []*csi.Topology{{Segments: segments}}}
	s.snapshots[name] = snapshot
	return snapshot.SnapshotId
}

// VolumeID and SnapshotID are the fake's deterministic IDs for a CSI name.
// Volume IDs have the driver's form (a volume's PV is reclaimed only if its
// handle was made under the PV's name); the owner is the fake pool's.
func VolumeID(name string) string {
	return volumeid.MakeID(volumeid.KindVolume, topology.ScopeNode, "fakecsi", name)
}
func SnapshotID(name string) string { return "snap-" + name }

// begin records a call and returns its scripted fault, if any.
func (s *Server) begin(method string) (Fault, bool) {
	s.calls = append(s.calls, method)
	faults := s.faults[method]
	if len(faults) == 0 {
		return Fault{}, false
	}
	s.faults[method] = faults[1:]
	return faults[0], true
}

func (s *Server) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fault, failing := s.begin("CreateVolume")
	if failing && !fault.After {
		return nil, fault.Err
	}
	volume, ok := s.volumes[req.GetName()]
	if !ok {
		if snap := req.GetVolumeContentSource().GetSnapshot(); snap != nil && !s.hasSnapshot(snap.GetSnapshotId()) {
			return nil, status.Errorf(codes.NotFound, "snapshot %s not found", snap.GetSnapshotId())
		}
		volume = &csi.Volume{VolumeId: VolumeID(req.GetName()), CapacityBytes: req.GetCapacityRange().GetRequiredBytes(),
			ContentSource: req.GetVolumeContentSource()}
		if requisite := req.GetAccessibilityRequirements().GetRequisite(); len(requisite) > 0 {
			volume.AccessibleTopology = []*csi.Topology{requisite[0]}
		}
		s.volumes[req.GetName()] = volume
	}
	if failing {
		return nil, fault.Err
	}
	return &csi.CreateVolumeResponse{Volume: volume}, nil
}

func (s *Server) hasSnapshot(id string) bool {
	for _, snapshot := range s.snapshots {
		if snapshot.SnapshotId == id {
			return true
		}
	}
	return false
}

func (s *Server) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fault, failing := s.begin("DeleteVolume"); failing {
		return nil, fault.Err
	}
	for name, volume := range s.volumes {
		if volume.VolumeId == req.GetVolumeId() {
			delete(s.volumes, name)
		}
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (s *Server) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fault, failing := s.begin("CreateSnapshot")
	if failing && !fault.After {
		return nil, fault.Err
	}
	snapshot, ok := s.snapshots[req.GetName()]
	if !ok {
		var source *csi.Volume
		for _, volume := range s.volumes {
			if volume.VolumeId == req.GetSourceVolumeId() {
				source = volume
			}
		}
		if source == nil {
			return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetSourceVolumeId())
		}
		snapshot = &csi.Snapshot{SnapshotId: SnapshotID(req.GetName()), SourceVolumeId: source.VolumeId, ReadyToUse: true,
			SizeBytes: source.CapacityBytes, AccessibleTopology: source.AccessibleTopology}
		s.snapshots[req.GetName()] = snapshot
	}
	if failing {
		return nil, fault.Err
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshot}, nil
}

func (s *Server) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fault, failing := s.begin("DeleteSnapshot"); failing {
		return nil, fault.Err
	}
	for name, snapshot := range s.snapshots {
		if snapshot.SnapshotId == req.GetSnapshotId() {
			delete(s.snapshots, name)
		}
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (s *Server) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fault, failing := s.begin("GetSnapshot"); failing {
		return nil, fault.Err
	}
	for _, snapshot := range s.snapshots {
		if snapshot.SnapshotId == req.GetSnapshotId() {
			return &csi.GetSnapshotResponse{Snapshot: snapshot}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "snapshot %s not found", req.GetSnapshotId())
}

func (s *Server) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fault, failing := s.begin("ControllerExpandVolume"); failing {
		return nil, fault.Err
	}
	for _, volume := range s.volumes {
		if volume.VolumeId == req.GetVolumeId() {
			volume.CapacityBytes = req.GetCapacityRange().GetRequiredBytes()
			return &csi.ControllerExpandVolumeResponse{CapacityBytes: volume.CapacityBytes}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
}

// SetVolumeContext replaces a volume's context, e.g. to say it is still
// being made.
func (s *Server) SetVolumeContext(volumeID string, context map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, volume := range s.volumes {
		if volume.VolumeId == volumeID {
			volume.VolumeContext = context
		}
	}
}

func (s *Server) ListVolumes(_ context.Context, _ *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fault, failing := s.begin("ListVolumes"); failing {
		return nil, fault.Err
	}
	resp := &csi.ListVolumesResponse{}
	for _, volume := range s.volumes {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: volume})
	}
	return resp, nil
}
