package provisioner

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/toposnap/toposnap/internal/kube"
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
	// Routed: watch only what toposnap-controller routed to this node.
	Routed bool
	Background
}

// Run provisions for this node until ctx ends.
func Run(ctx context.Context, opts Options) error {
	env, err := kube.NewEnv(ctx, kube.EnvOptions{
		Kubeconfig: opts.Kubeconfig, CSIAddress: opts.CSIAddress, Component: "toposnap-provisioner",
		NodeName: opts.NodeName, MetricsAddress: opts.MetricsAddress, Resync: opts.Resync,
		QPS: opts.QPS, Burst: opts.Burst, Routed: opts.Routed,
	})
	if err != nil {
		return err
	}
	defer env.Close()
	controller := NewController(Config{
		DriverName: env.Driver.Name, NodeName: opts.NodeName, NodeSegment: env.Driver.Segment, Timeout: opts.Timeout,
		Client: env.Client, Snapshots: env.Snapshots, CSI: csi.NewControllerClient(env.Driver.Conn), Recorder: env.Recorder,
		CapacityNamespace: opts.CapacityNamespace, Registry: env.Registry, Routed: opts.Routed,
	}, env.Informers)
	env.Start(ctx)
	return controller.Run(ctx, opts.Workers, opts.Background)
}
