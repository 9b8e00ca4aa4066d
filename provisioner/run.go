package provisioner

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// Options configure the provisioner process.
type Options struct {
	Kubeconfig string
	CSIAddress string
	NodeName   string
	Timeout    time.Duration
	Workers    int
	Resync     time.Duration
	// QPS and Burst limit the API client.
	QPS            float32
	Burst          int
	MetricsAddress string
	// CapacityNamespace holds CSIStorageCapacity objects and zone Leases.
	CapacityNamespace string
	// Routed: watch only what toposnap-controller routed to this node, and
	// the zone's objects only while holding the zone's Lease.
	Routed bool
	Background
}

// Run provisions for this node until ctx ends.
func Run(ctx context.Context, opts Options) error {
	env, err := kube.NewEnv(ctx, kube.EnvOptions{
		Kubeconfig: opts.Kubeconfig, CSIAddress: opts.CSIAddress, Component: "toposnap-provisioner",
		NodeName: opts.NodeName, MetricsAddress: opts.MetricsAddress, Resync: opts.Resync,
		QPS: opts.QPS, Burst: opts.Burst, Routed: opts.Routed, ZoneOnLease: opts.Routed,
	})
	if err != nil {
		return err
	}
	defer env.Close()
	cfg := Config{
		DriverName: env.Driver.Name, NodeName: opts.NodeName, NodeSegment: env.Driver.Segment, Timeout: opts.Timeout,
		Client: env.Client, Snapshots: env.Snapshots, CSI: csi.NewControllerClient(env.Driver.Conn), Recorder: env.Recorder,
		CapacityNamespace: opts.CapacityNamespace, Registry: env.Registry, Routed: opts.Routed,
	}
	_, split := env.ZoneInformers()
	if split {
		cfg.Role = RoleNode
	}
	controller := NewController(cfg, env.Informers)
	env.Start(ctx)
	if split {
		segment := cfg.NodeSegment
		terms := &kube.ZoneTerms{
			Env: env, Namespace: cfg.CapacityNamespace, Identity: cfg.NodeName,
			Lease: ZoneLeaseName(segment[topology.RegionKey], segment[topology.ZoneKey]),
		}
		terms.Term = func(term context.Context, zone kube.Informers) {
			zoneCfg := cfg
			zoneCfg.Role, zoneCfg.Zone, zoneCfg.Registry = RoleZone, &terms.Holder, nil
			zoneController := NewController(zoneCfg, zone)
			// One set of series, and one capacity publisher (the node's),
			// told early of what the zone's volumes change.
			zoneController.metrics, zoneController.capacityChanged = controller.metrics, controller.capacityChanged
			defer controller.metrics.orphans.DeleteLabelValues("zone")
			env.StartZone(term, zone)
			if err := zoneController.Run(term, opts.Workers, opts.Background); err != nil {
				klog.ErrorS(err, "Zone provisioner stopped")
			}
		}
		go terms.Run(ctx)
	}
	return controller.Run(ctx, opts.Workers, opts.Background)
}
