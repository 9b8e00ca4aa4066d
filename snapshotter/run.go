package snapshotter

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/toposnap/toposnap/internal/kube"
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
	// Routed: watch only what toposnap-controller routed to this node.
	Routed bool
}

// Run handles this node's snapshots until ctx ends.
func Run(ctx context.Context, opts Options) error {
	env, err := kube.NewEnv(ctx, kube.EnvOptions{
		Kubeconfig: opts.Kubeconfig, CSIAddress: opts.CSIAddress, Component: "toposnap-snapshotter",
		NodeName: opts.NodeName, MetricsAddress: opts.MetricsAddress, Resync: opts.Resync,
		QPS: opts.QPS, Burst: opts.Burst, Routed: opts.Routed,
	})
	if err != nil {
		return err
	}
	defer env.Close()
	controller := NewController(Config{
		DriverName: env.Driver.Name, NodeName: opts.NodeName, NodeSegment: env.Driver.Segment, Timeout: opts.Timeout,
		CommonController: opts.CommonController, Snapshots: env.Snapshots, Client: env.Client, Routed: opts.Routed, CSI: csi.NewControllerClient(env.Driver.Conn), Recorder: env.Recorder,
		Registry: env.Registry,
	}, env.Informers)
	env.Start(ctx)
	return controller.Run(ctx, opts.Workers)
}
