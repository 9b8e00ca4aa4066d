package driver

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/topology"
)

// maxNameLength is CSI's limit for names and IDs.
const maxNameLength = 128

// DefaultVolumeSize is used when a request names no size.
const DefaultVolumeSize int64 = 1 << 30

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// validateName checks a CSI volume or snapshot name. Names never become
// paths (IDs are hashes), but path-like names are refused so nothing that
// looks like one is ever stored.
func validateName(kind, name string) error {
	switch {
	case name == "":
		return status.Errorf(codes.InvalidArgument, "%s name is required", kind)
	case len(name) > maxNameLength:
		return status.Errorf(codes.InvalidArgument, "%s name is %d bytes; at most %d allowed", kind, len(name), maxNameLength)
	case !namePattern.MatchString(name):
		return status.Errorf(codes.InvalidArgument,
			"%s name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit (no '/' or '..')", kind, name)
	}
	return nil
}

// volumeSize picks a volume's size from a capacity range: the required
// bytes, or the source's size, or the default, never above the limit.
// minimum is the size of the source the volume is filled from (0 if none).
func volumeSize(capacity *csi.CapacityRange, minimum, poolCapacity int64) (int64, error) {
	required, limit := capacity.GetRequiredBytes(), capacity.GetLimitBytes()
	if required < 0 || limit < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "capacity range must not be negative (required %d, limit %d)", required, limit)
	}
	if limit > 0 && required > limit {
		return 0, status.Errorf(codes.OutOfRange, "capacity limit %d bytes is below the required %d bytes", limit, required)
	}
	size := required
	if size == 0 {
		size = max(minimum, DefaultVolumeSize)
		if limit > 0 {
			size = min(size, limit)
		}
	}
	if size < minimum {
		return 0, status.Errorf(codes.OutOfRange,
			"requested %d bytes is smaller than the source's %d bytes; ask for at least %d", size, minimum, minimum)
	}
	if size > poolCapacity {
		return 0, status.Errorf(codes.OutOfRange, "requested %d bytes exceeds the pool's total capacity of %d bytes", size, poolCapacity)
	}
	return size, nil
}

// checkCapabilities accepts mount and block volumes in any access mode
// their scope can serve (a node-scope volume is on one node only), all of
// one access type, and reports whether that type is block.
func checkCapabilities(caps []*csi.VolumeCapability, scope topology.Scope) (bool, error) {
	if len(caps) == 0 {
		return false, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	block := caps[0].GetBlock() != nil
	for _, c := range caps {
		switch {
		case c.GetBlock() == nil && c.GetMount() == nil:
			return false, status.Error(codes.InvalidArgument, "volume capability must set an access type (mount or block)")
		case (c.GetBlock() != nil) != block:
			return false, status.Error(codes.InvalidArgument, "volume capabilities mix block and mount access; a volume is one or the other")
		}
		mode := c.GetAccessMode().GetMode()
		switch mode {
		case csi.VolumeCapability_AccessMode_UNKNOWN:
			return false, status.Error(codes.InvalidArgument, "volume capability must set an access mode")
		case csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
			if scope == topology.ScopeNode {
				return false, status.Errorf(codes.InvalidArgument, "access mode %s needs several nodes; node-scope volumes live on one node (use scope=zone)", mode)
			}
		}
	}
	return block, nil
}

// checkVolumeCapabilities checks capabilities against an existing volume:
// servable in its scope and of its access type.
func checkVolumeCapabilities(caps []*csi.VolumeCapability, vol store.Volume) error {
	block, err := checkCapabilities(caps, vol.Scope)
	if err != nil {
		return err
	}
	if block != vol.Block {
		return status.Errorf(codes.InvalidArgument, "volume %s is a %s volume; the capability asks for %s access",
			vol.ID, accessType(vol.Block), accessType(block))
	}
	return nil
}

func accessType(block bool) string {
	if block {
		return "block"
	}
	return "mount"
}

// layoutOf reads the nestedSubvolumes parameter: "deny" (the default)
// seals a filesystem volume (store.Layout: the pod sees an overlay, no
// btrfs ioctl reaches the pool); "allow" shows the pod its subvolume, where
// it may nest subvolumes of its own (each put back under the volume's
// limit by the pool's watcher, and refused by snapshots while there).
func layoutOf(params map[string]string) (store.Layout, error) {
	switch v := params["nestedSubvolumes"]; v {
	case "", "deny":
		return store.LayoutSealed, nil
	case "allow":
		return store.LayoutRoot, nil
	default:
		return "", status.Errorf(codes.InvalidArgument, "parameter nestedSubvolumes is %q; want deny (the default) or allow", v)
	}
}

// scopeOf reads the scope parameter.
func scopeOf(params map[string]string) (topology.Scope, error) {
	scope, err := topology.ParseScope(params["scope"])
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	return scope, nil
}

func segments(topologies []*csi.Topology) []topology.Segment {
	out := make([]topology.Segment, 0, len(topologies))
	for _, t := range topologies {
		out = append(out, topology.Segment(t.GetSegments()))
	}
	return out
}

func csiTopology(seg topology.Segment) []*csi.Topology {
	return []*csi.Topology{{Segments: seg}}
}

// storeStatus maps a store error to the CSI code a caller can act on.
func storeStatus(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	var refused refusal
	switch {
	case err == nil:
		return nil
	case errors.As(err, &refused), errors.Is(err, store.ErrForeign):
		// Repeating the call cannot help until someone acts on the reason.
		return status.Errorf(codes.FailedPrecondition, "%s: %v", msg, err)
	case errors.Is(err, store.ErrInFlight), errors.Is(err, store.ErrFilling):
		// Both are in progress, not failed: the CO repeats the call.
		return status.Errorf(codes.Aborted, "%s: %v", msg, err)
	case errors.Is(err, store.ErrExists):
		return status.Errorf(codes.AlreadyExists, "%s: %v", msg, err)
	case errors.Is(err, store.ErrNoSpace):
		return status.Errorf(codes.ResourceExhausted, "%s: %v", msg, err)
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: %v", msg, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", msg, err)
}

// refusal is an error a backend returns when it will not do what was asked
// for a reason the user can act on (a nested subvolume a snapshot would
// leave out, say): Refusal names it. Backends cannot import the driver or
// the store, so the contract is this method, not a sentinel.
type refusal interface {
	error
	Refusal() string
}
