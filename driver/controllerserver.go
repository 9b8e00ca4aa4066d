package driver

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/topology"
)

// errElsewhere means an ID is well formed but names a pool this node cannot reach.
var errElsewhere = errors.New("lives in a pool this node cannot reach")

// poolFor returns the pool volumes of the given scope are created in here.
func (d *Driver) poolFor(scope topology.Scope) *store.Pool {
	if scope == topology.ScopeZone {
		return d.zonePool
	}
	return d.nodePool
}

// locate finds the local pool holding an object of the given kind. Errors:
// a malformed ID or wrong kind is store.ErrNotFound; a well-formed ID of
// another node's or zone's pool is errElsewhere.
func (d *Driver) locate(id string, kind store.Kind) (*store.Pool, error) {
	parsed, err := store.ParseID(id)
	if err != nil || parsed.Kind != kind {
		return nil, store.ErrNotFound
	}
	for _, pool := range []*store.Pool{d.nodePool, d.zonePool} {
		if pool != nil && pool.Owns(parsed) {
			return pool, nil
		}
	}
	return nil, errElsewhere
}

// lookupVolume returns a ready local volume or a NOT_FOUND status.
func (d *Driver) lookupVolume(id string) (*store.Pool, store.Volume, error) {
	pool, err := d.locate(id, store.KindVolume)
	if err != nil {
		return nil, store.Volume{}, status.Errorf(codes.NotFound, "volume %q: %v", id, err)
	}
	vol, err := pool.LookupVolume(id)
	if err != nil {
		return nil, store.Volume{}, storeStatus(err, "volume %q", id)
	}
	if vol.State != store.StateReady {
		return nil, store.Volume{}, status.Errorf(codes.NotFound, "volume %q is still being created", id)
	}
	return pool, vol, nil
}

// CreateVolume creates a volume in this node's pool (scope=node) or its
// zone's pool (scope=zone), honouring the requested topology: a request this
// node cannot serve is RESOURCE_EXHAUSTED so the CO tries elsewhere.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if err := validateName("volume", req.GetName()); err != nil {
		return nil, err
	}
	scope, err := scopeOf(req.GetParameters())
	if err != nil {
		return nil, err
	}
	layout, err := layoutOf(req.GetParameters())
	if err != nil {
		return nil, err
	}
	block, err := checkCapabilities(req.GetVolumeCapabilities(), scope)
	if err != nil {
		return nil, err
	}
	pool := d.poolFor(scope)
	if pool == nil {
		return nil, status.Errorf(codes.ResourceExhausted, "node %s has no zone pool; zone-scope volumes cannot be created here", d.location.Node)
	}
	if requisite := segments(req.GetAccessibilityRequirements().GetRequisite()); len(requisite) > 0 {
		if _, ok := d.location.ReachesAny(scope, requisite); !ok {
			return nil, status.Errorf(codes.ResourceExhausted,
				"a %s-scope volume created on node %s is reachable from %s, which is none of the requisite topologies %v",
				scope, d.location.Node, d.location.VolumeSegment(scope), requisite)
		}
	}
	source, minimum, sourceBlock, err := d.resolveSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	if source != nil && sourceBlock != block {
		return nil, status.Errorf(codes.InvalidArgument, "the source is a %s volume's data; it cannot fill a %s volume",
			accessType(sourceBlock), accessType(block))
	}
	total, err := pool.TotalCapacity()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "pool capacity: %v", err)
	}
	size, err := volumeSize(req.GetCapacityRange(), minimum, total)
	if err != nil {
		return nil, err
	}
	vol, err := pool.CreateVolume(ctx, store.VolumeRequest{
		Name: req.GetName(), CapacityBytes: size, Parameters: req.GetParameters(), Source: source, Block: block,
		Layout: layout,
	})
	if err != nil {
		return nil, storeStatus(err, "create volume %q", req.GetName())
	}
	return &csi.CreateVolumeResponse{Volume: csiVolume(vol, req.GetVolumeContentSource())}, nil
}

func csiVolume(vol store.Volume, source *csi.VolumeContentSource) *csi.Volume {
	if source == nil {
		switch {
		case vol.SourceSnapshotID != "":
			source = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: vol.SourceSnapshotID}}}
		case vol.SourceVolumeID != "":
			source = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vol.SourceVolumeID}}}
		}
	}
	context := map[string]string{"scope": string(vol.Scope)}
	if vol.State != store.StateReady {
		// Only ListVolumes shows such volumes; CSI has no field for it.
		context[StateContextKey] = string(vol.State)
	}
	return &csi.Volume{
		VolumeId:           vol.ID,
		CapacityBytes:      vol.CapacityBytes,
		VolumeContext:      context,
		ContentSource:      source,
		AccessibleTopology: csiTopology(vol.Segment),
	}
}

// resolveSource finds a restore's snapshot or a clone's volume, its size
// and whether it holds a block volume. A source in a pool this node cannot
// reach is RESOURCE_EXHAUSTED (never NOT_FOUND: it exists, just not here),
// so the CO picks a node that can reach it.
func (d *Driver) resolveSource(src *csi.VolumeContentSource) (*store.Source, int64, bool, error) {
	switch {
	case src == nil:
		return nil, 0, false, nil
	case src.GetSnapshot() != nil:
		id := src.GetSnapshot().GetSnapshotId()
		pool, err := d.locate(id, store.KindSnapshot)
		if errors.Is(err, errElsewhere) {
			return nil, 0, false, status.Errorf(codes.ResourceExhausted,
				"snapshot %q is in another node's or zone's pool and cannot be restored on node %s", id, d.location.Node)
		}
		if err != nil {
			return nil, 0, false, status.Errorf(codes.NotFound, "source snapshot %q not found", id)
		}
		snap, err := pool.LookupSnapshot(id)
		if err != nil {
			return nil, 0, false, storeStatus(err, "source snapshot %q", id)
		}
		if !snap.Ready() {
			return nil, 0, false, status.Errorf(codes.FailedPrecondition, "source snapshot %q is not ready yet; retry once it is", id)
		}
		return &store.Source{Pool: pool, SnapshotID: id, Layout: snap.Layout}, snap.SizeBytes, snap.Block, nil
	case src.GetVolume() != nil:
		id := src.GetVolume().GetVolumeId()
		pool, err := d.locate(id, store.KindVolume)
		if errors.Is(err, errElsewhere) {
			return nil, 0, false, status.Errorf(codes.ResourceExhausted,
				"source volume %q is in another node's or zone's pool and cannot be cloned on node %s", id, d.location.Node)
		}
		if err != nil {
			return nil, 0, false, status.Errorf(codes.NotFound, "source volume %q not found", id)
		}
		vol, err := pool.LookupVolume(id)
		if err != nil {
			return nil, 0, false, storeStatus(err, "source volume %q", id)
		}
		if vol.State != store.StateReady {
			return nil, 0, false, status.Errorf(codes.FailedPrecondition, "source volume %q is still being created", id)
		}
		return &store.Source{Pool: pool, VolumeID: id, Layout: vol.Layout}, vol.CapacityBytes, vol.Block, nil
	}
	return nil, 0, false, status.Error(codes.InvalidArgument, "volume content source must name a snapshot or a volume")
}

// DeleteVolume removes a volume. Unknown IDs succeed (already gone); IDs of
// another node's pool fail, so the caller never forgets a volume it leaked.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	pool, err := d.locate(id, store.KindVolume)
	if errors.Is(err, errElsewhere) {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %q is in another node's or zone's pool; delete it through the driver on a node that reaches it (this is %s)", id, d.location.Node)
	}
	if err != nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	// A block volume staged here is still in use (CSI: unstage first), and
	// deleting it would leave its device holding the deleted image's blocks.
	attached, err := attachedDevices(pool, id)
	if err != nil {
		return nil, err
	}
	if len(attached) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %q is still staged on node %s: its image backs %s; unstage it first", id, d.location.Node, strings.Join(attached, ", "))
	}
	if err := pool.DeleteVolume(ctx, id); err != nil {
		return nil, storeStatus(err, "delete volume %q", id)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms the capabilities a volume can serve.
func (d *Driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	_, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if err := checkVolumeCapabilities(req.GetVolumeCapabilities(), vol); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// StateContextKey marks, in ListVolumes, a volume that is not ready: its
// value is "creating" (capacity reserved, data being put in place or
// interrupted by a crash; a repeated CreateVolume of its name completes it)
// or "deleting". Such volumes are listed so that nothing holding capacity is
// invisible: an orphan check sees them, and DeleteVolume removes them.
const StateContextKey = "toposnap.io/state"

// ListVolumes pages through the node pool's, then the zone pool's volumes,
// in every state (see StateContextKey). The token is the index of the next
// entry.
func (d *Driver) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	var all []store.Volume
	for _, pool := range []*store.Pool{d.nodePool, d.zonePool} {
		if pool == nil {
			continue
		}
		volumes, err := pool.ListVolumes()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "list volumes: %v", err)
		}
		all = append(all, volumes...)
	}
	start, end, next, err := page(len(all), req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	entries := make([]*csi.ListVolumesResponse_Entry, 0, end-start)
	for _, vol := range all[start:end] {
		entries = append(entries, &csi.ListVolumesResponse_Entry{Volume: csiVolume(vol, nil)})
	}
	return &csi.ListVolumesResponse{Entries: entries, NextToken: next}, nil
}

// page turns a CSI starting token and max entries into a slice window.
func page(total int, token string, maxEntries int32) (start, end int, next string, err error) {
	if maxEntries < 0 {
		return 0, 0, "", status.Errorf(codes.InvalidArgument, "max_entries must not be negative, got %d", maxEntries)
	}
	if token != "" {
		start, err = strconv.Atoi(token)
		if err != nil || start < 0 || start > total {
			return 0, 0, "", status.Errorf(codes.Aborted, "starting token %q is not valid (the list may have changed); list again from the start", token)
		}
	}
	end = total
	if maxEntries > 0 && start+int(maxEntries) < total {
		end = start + int(maxEntries)
		next = strconv.Itoa(end)
	}
	return start, end, next, nil
}

// GetCapacity reports a pool's free capacity for a topology segment; zero
// where this node's pool of that scope does not reach.
func (d *Driver) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	scope, err := scopeOf(req.GetParameters())
	if err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) > 0 {
		if _, err := checkCapabilities(req.GetVolumeCapabilities(), scope); err != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	pool := d.poolFor(scope)
	if pool == nil {
		return &csi.GetCapacityResponse{}, nil
	}
	if seg := req.GetAccessibleTopology().GetSegments(); seg != nil && !d.location.Reaches(scope, seg) {
		return &csi.GetCapacityResponse{}, nil
	}
	available, err := pool.Available()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "compute capacity: %v", err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: available,
		MaximumVolumeSize: wrapperspb.Int64(available),
	}, nil
}

// ControllerGetCapabilities lists the controller RPCs served.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	rpcs := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	}
	caps := make([]*csi.ControllerServiceCapability, 0, len(rpcs))
	for _, rpc := range rpcs {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: rpc},
		}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// ControllerExpandVolume grows a volume within its pool's free capacity.
// Directories need no node-side resize.
func (d *Driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	pool, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if req.GetCapacityRange().GetRequiredBytes() == 0 && req.GetCapacityRange().GetLimitBytes() == 0 {
		return nil, status.Error(codes.InvalidArgument, "capacity range must name required or limit bytes")
	}
	total, err := pool.TotalCapacity()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "pool capacity: %v", err)
	}
	size, err := volumeSize(req.GetCapacityRange(), 0, total)
	if err != nil {
		return nil, err
	}
	if size <= vol.CapacityBytes {
		// Already at least that large: nothing to do (volumes never shrink).
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: vol.CapacityBytes}, nil
	}
	vol, err = pool.ExpandVolume(req.GetVolumeId(), size)
	if err != nil {
		return nil, storeStatus(err, "expand volume %q to %d bytes", req.GetVolumeId(), size)
	}
	// A block volume's loop device must be told its image grew (on the node).
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: vol.CapacityBytes, NodeExpansionRequired: vol.Block}, nil
}
