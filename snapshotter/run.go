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
}

// Run handles this node's snapshots until ctx ends.
func Run(ctx context.Context, opts Options) error {
	env, err := kube.NewEnv(ctx, kube.EnvOptions{
		Kubeconfig: opts.Kubeconfig, CSIAddress: opts.CSIAddress, Component: "toposnap-snapshotter",
		NodeName: opts.NodeName, MetricsAddress: opts.MetricsAddress, Resync: opts.Resync,
		QPS: opts.QPS, Burst: opts.Burst,
	})
	if err != nil {
		return err
	}
	defer env.Close()
	controller := NewController(Config{
		DriverName: env.Driver.Name, NodeName: opts.NodeName, NodeSegment: env.Driver.Segment, Timeout: opts.Timeout,
		CommonController: opts.CommonController, Snapshots: env.Snapshots, CSI: csi.NewControllerClient(env.Driver.Conn), Recorder: env.Recorder,
		Registry: env.Registry,
	}, env.KubeInformers, env.SnapInformers)
	env.Start(ctx)
	return controller.Run(ctx, opts.Workers)
}
