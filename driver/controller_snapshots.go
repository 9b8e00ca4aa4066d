package driver

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver/store"
)

// CreateSnapshot copies a volume into its pool's snapshot area. It waits up
// to SnapshotWait for the copy; a longer copy continues in the background and
// the answer is ready_to_use=false until a repeated call finds it done.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := validateName("snapshot", req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	pool, source, err := d.snapshotSource(req.GetSourceVolumeId())
	if status.Code(err) == codes.NotFound {
		// A retry after the source volume was deleted still finds what the
		// first call cut, so the caller can delete it instead of leaking it.
		if snap, ok := d.snapshotCutFrom(req.GetName(), req.GetSourceVolumeId()); ok {
			return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	// Snapshot names are global: one of that name cut from another volume,
	// in either pool, is a conflict.
	for _, other := range []*store.Pool{d.nodePool, d.zonePool} {
		if other == nil {
			continue
		}
		if existing, err := other.LookupSnapshot(other.SnapshotID(req.GetName())); err == nil && existing.SourceVolumeID != source.ID {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for volume %s, not %s",
				req.GetName(), existing.SourceVolumeID, source.ID)
		}
	}
	requested, err := d.checkSnapshotTopology(pool, req.GetAccessibilityRequirements())
	if err != nil {
		return nil, err
	}
	snap, err := pool.CreateSnapshot(req.GetName(), source)
	if err != nil {
		return nil, storeStatus(err, "create snapshot %q", req.GetName())
	}
	if !snap.Ready() {
		waitCtx, cancel := context.WithTimeout(ctx, d.opts.SnapshotWait)
		snap, err = pool.WaitSnapshot(waitCtx, snap.ID)
		cancel()
		if err != nil {
			return nil, storeStatus(err, "snapshot %q", req.GetName())
		}
	}
	if !snap.Ready() {
		if progress, ok := pool.Progress(snap.ID); ok {
			klog.InfoS("Snapshot copy in progress", "snapshot", snap.ID, "name", snap.Name,
				"copiedBytes", progress.CopiedBytes, "totalBytes", progress.TotalBytes)
		}
	}
	response := csiSnapshot(snap)
	if requested {
		// The caller constrained the snapshot and we verified it serves one of
		// its requisite segments; echoing them back adds nothing. GetSnapshot
		// and ListSnapshots report the pool's own segment.
		response.AccessibleTopology = nil
	}
	return &csi.CreateSnapshotResponse{Snapshot: response}, nil
}

// checkSnapshotTopology checks a snapshot's accessibility requirements. A
// snapshot stays in its source's pool, so it is usable where that pool
// reaches; a requisite it cannot serve is RESOURCE_EXHAUSTED. It reports
// whether the request carried requirements at all.
func (d *Driver) checkSnapshotTopology(pool *store.Pool, requirements *csi.TopologyRequirement) (bool, error) {
	requisite := segments(requirements.GetRequisite())
	if len(requisite) == 0 {
		return false, nil
	}
	scope := pool.Config().Scope
	if _, ok := d.location.ReachesAny(scope, requisite); !ok {
		return true, status.Errorf(codes.ResourceExhausted,
			"a snapshot of this %s-scope volume is usable from %s only, none of the requisite topologies %v",
			scope, pool.Config().Segment, requisite)
	}
	return true, nil
}

// snapshotSource finds the volume to snapshot among this node's pools.
func (d *Driver) snapshotSource(id string) (*store.Pool, store.Volume, error) {
	pool, err := d.locate(id, store.KindVolume)
	if errors.Is(err, errElsewhere) {
		return nil, store.Volume{}, status.Errorf(codes.FailedPrecondition,
			"volume %q is in another node's or zone's pool; snapshot it through the driver on a node that reaches it (this is %s)", id, d.location.Node)
	}
	if err != nil {
		return nil, store.Volume{}, status.Errorf(codes.NotFound, "source volume %q not found", id)
	}
	vol, err := pool.LookupVolume(id)
	if err != nil {
		return nil, store.Volume{}, storeStatus(err, "source volume %q", id)
	}
	if vol.State != store.StateReady {
		return nil, store.Volume{}, status.Errorf(codes.FailedPrecondition, "source volume %q is still being created", id)
	}
	return pool, vol, nil
}

// snapshotCutFrom finds the snapshot of that name cut from sourceID in
// either pool.
func (d *Driver) snapshotCutFrom(name, sourceID string) (store.Snapshot, bool) {
	for _, pool := range []*store.Pool{d.nodePool, d.zonePool} {
		if pool == nil {
			continue
		}
		if snap, err := pool.LookupSnapshot(pool.SnapshotID(name)); err == nil && snap.SourceVolumeID == sourceID {
			return snap, true
		}
	}
	return store.Snapshot{}, false
}

func csiSnapshot(snap store.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:         snap.ID,
		SourceVolumeId:     snap.SourceVolumeID,
		SizeBytes:          snap.SizeBytes,
		CreationTime:       timestamppb.New(snap.CreatedAt),
		ReadyToUse:         snap.Ready(),
		AccessibleTopology: csiTopology(snap.Segment),
	}
}

// DeleteSnapshot removes a snapshot, cancelling its copy if one runs.
// Unknown IDs succeed; IDs of an unreachable pool fail so nothing leaks.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	pool, err := d.locate(id, store.KindSnapshot)
	if errors.Is(err, errElsewhere) {
		return nil, status.Errorf(codes.FailedPrecondition,
			"snapshot %q is in another node's or zone's pool; delete it through the driver on a node that reaches it (this is %s)", id, d.location.Node)
	}
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err := pool.DeleteSnapshot(ctx, id); err != nil {
		return nil, storeStatus(err, "delete snapshot %q", id)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots pages through snapshots, optionally of one ID or one source.
func (d *Driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var all []store.Snapshot
	for _, pool := range []*store.Pool{d.nodePool, d.zonePool} {
		if pool == nil {
			continue
		}
		snapshots, err := pool.ListSnapshots()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "list snapshots: %v", err)
		}
		for _, snap := range snapshots {
			if req.GetSnapshotId() != "" && snap.ID != req.GetSnapshotId() {
				continue
			}
			if req.GetSourceVolumeId() != "" && snap.SourceVolumeID != req.GetSourceVolumeId() {
				continue
			}
			all = append(all, snap)
		}
	}
	start, end, next, err := page(len(all), req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	entries := make([]*csi.ListSnapshotsResponse_Entry, 0, end-start)
	for _, snap := range all[start:end] {
		entries = append(entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(snap)})
	}
	return &csi.ListSnapshotsResponse{Entries: entries, NextToken: next}, nil
}

// GetSnapshot returns one snapshot's current state.
func (d *Driver) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	pool, err := d.locate(id, store.KindSnapshot)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %q: %v", id, err)
	}
	snap, err := pool.LookupSnapshot(id)
	if err != nil {
		return nil, storeStatus(err, "snapshot %q", id)
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}
