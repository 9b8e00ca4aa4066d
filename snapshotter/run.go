package snapshotter

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

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
}

// Run handles this node's snapshots until ctx ends.
func Run(ctx context.Context, opts Options) error {
	if opts.NodeName == "" {
		return fmt.Errorf("--node-name is required")
	}
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create API client: %w", err)
	}
	snapClient, err := snapshotclient.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create snapshot API client: %w", err)
	}
	driver, err := kube.ConnectDriver(ctx, opts.CSIAddress)
	if err != nil {
		return err
	}
	defer driver.Conn.Close()
	recorder, stopEvents := kube.Recorder(client, "toposnap-snapshotter", opts.NodeName)
	defer stopEvents()
	if err := kube.ServeMetrics(ctx, opts.MetricsAddress, prometheus.NewRegistry()); err != nil {
		return err
	}
	kubeInformers := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, informers.WithTransform(kube.StripManagedFields))
	snapInformers := snapshotinformers.NewSharedInformerFactoryWithOptions(snapClient, opts.Resync, snapshotinformers.WithTransform(kube.StripManagedFields))
	controller := NewController(Config{
		DriverName: driver.Name, NodeName: opts.NodeName, NodeSegment: driver.Segment, Timeout: opts.Timeout,
		CommonController: opts.CommonController, Snapshots: snapClient, CSI: csi.NewControllerClient(driver.Conn), Recorder: recorder,
	}, kubeInformers, snapInformers)
	kubeInformers.Start(ctx.Done())
	snapInformers.Start(ctx.Done())
	defer kubeInformers.Shutdown()
	defer snapInformers.Shutdown()
	return controller.Run(ctx, opts.Workers)
}
