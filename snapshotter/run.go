package snapshotter

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// Options configure the snapshotter process.
type Options struct {
	Kubeconfig       string
	CSIAddress       string
	NodeName         string
	Timeout          time.Duration
	Workers          int
	Resync           time.Duration
	CommonController bool
	MetricsAddress   string
	// QPS and Burst limit the API client.
	QPS   float32
	Burst int
	// Routed: watch only what toposnap-controller routed to this node, and
	// the zone's objects while holding the zone's Lease.
	Routed bool
	// LeaseNamespace holds the zone Leases (the provisioner's
	// --capacity-namespace).
	LeaseNamespace string
}

// Run handles this node's snapshots until ctx ends. Routed, the zone's
// snapshots and contents are watched only while this node holds its zone's
// snapshot Lease (kube.SnapshotLeaseName), by a second Controller that
// lives for that term.
func Run(ctx context.Context, opts Options) error {
	env, err := kube.NewEnv(ctx, kube.EnvOptions{
		Kubeconfig: opts.Kubeconfig, CSIAddress: opts.CSIAddress, Component: "toposnap-snapshotter",
		NodeName: opts.NodeName, MetricsAddress: opts.MetricsAddress, Resync: opts.Resync,
		QPS: opts.QPS, Burst: opts.Burst, Routed: opts.Routed, ZoneOnLease: opts.Routed,
	})
	if err != nil {
		return err
	}
	defer env.Close()
	cfg := Config{
		DriverName: env.Driver.Name, NodeName: opts.NodeName, NodeSegment: env.Driver.Segment, Timeout: opts.Timeout,
		CommonController: opts.CommonController, Snapshots: env.Snapshots, Client: env.Client, Routed: opts.Routed, CSI: csi.NewControllerClient(env.Driver.Conn), Recorder: env.Recorder,
		Registry: env.Registry,
	}
	controller := NewController(cfg, env.Informers)
	env.Start(ctx)
	if _, split := env.ZoneInformers(); split {
		segment := cfg.NodeSegment
		terms := &kube.ZoneTerms{
			Env: env, Namespace: opts.LeaseNamespace, Identity: cfg.NodeName,
			Lease: kube.SnapshotLeaseName(segment[topology.RegionKey], segment[topology.ZoneKey]),
		}
		terms.Term = func(term context.Context, zone kube.Informers) {
			zoneCfg := cfg
			zoneCfg.Registry = nil
			zoneController := NewController(zoneCfg, zone)
			zoneController.metrics = controller.metrics
			env.StartZone(term, zone)
			if err := zoneController.Run(term, opts.Workers); err != nil {
				klog.ErrorS(err, "Zone snapshotter stopped")
			}
		}
		go terms.Run(ctx)
	}
	return controller.Run(ctx, opts.Workers)
}
