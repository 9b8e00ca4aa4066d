package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver/store"
)

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: Name, VendorVersion: d.opts.Version}, nil
}

// GetPluginCapabilities: a controller service, and volumes and snapshots
// that are reachable only from some topology.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	types := []csi.PluginCapability_Service_Type{
		csi.PluginCapability_Service_CONTROLLER_SERVICE,
		csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS,
		csi.PluginCapability_Service_SNAPSHOT_ACCESSIBILITY_CONSTRAINTS,
	}
	caps := make([]*csi.PluginCapability, 0, len(types))
	for _, t := range types {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{
			Service: &csi.PluginCapability_Service{Type: t},
		}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe is ready once the pools are open, which New guarantees.
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if err := d.poolsHealthy(ctx); err != nil {
		klog.ErrorS(err, "Probe: not ready")
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(false)}, nil
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// poolsHealthy checks that every pool's metadata directory is there: a
// zone pool whose shared storage went away, or a node pool on a failed
// disk, makes the driver not ready (and its /healthz fail).
func (d *Driver) poolsHealthy(context.Context) error {
	for _, pool := range []*store.Pool{d.nodePool, d.zonePool} {
		if pool == nil {
			continue
		}
		dir := filepath.Join(pool.Config().Dir, "meta")
		info, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("%s pool: %w", pool.Config().Scope, err)
		}
		if !info.IsDir() {
			return fmt.Errorf("%s pool: %s is not a directory", pool.Config().Scope, dir)
		}
	}
	return nil
}
