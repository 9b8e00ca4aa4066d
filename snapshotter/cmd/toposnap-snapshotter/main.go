// Command toposnap-snapshotter cuts and deletes toposnap snapshots for the
// node it runs on: see package snapshotter.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/snapshotter"
)

func main() {
	var opts snapshotter.Options
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig (empty: in-cluster)")
	flag.StringVar(&opts.CSIAddress, "csi-address", "/csi/csi.sock", "the node's CSI driver socket")
	flag.StringVar(&opts.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name")
	flag.DurationVar(&opts.Timeout, "timeout", time.Minute, "timeout of one CSI call")
	flag.IntVar(&opts.Workers, "workers", 4, "concurrent snapshots and contents handled")
	flag.DurationVar(&opts.Resync, "resync", 10*time.Minute, "informer resync period")
	var qps float64
	flag.Float64Var(&qps, "kube-api-qps", 20, "API requests per second, sustained (client-side limit)")
	flag.IntVar(&opts.Burst, "kube-api-burst", 50, "API requests in a burst above --kube-api-qps")
	flag.BoolVar(&opts.CommonController, "common-controller", false, "also bind VolumeSnapshots to contents (only where no snapshot-controller runs)")
	flag.StringVar(&opts.MetricsAddress, "metrics-address", "", "serve /metrics and /healthz here (empty: off)")
	flag.StringVar(&opts.LeaseNamespace, "lease-namespace", kube.EnvOr("POD_NAMESPACE", "kube-system"), "namespace of the zone Leases (the provisioner's --capacity-namespace); with --routed, the zone's snapshots are watched while this node holds its zone's")
	flag.BoolVar(&opts.Routed, "routed", false, "watch only the snapshots, contents, claims and PVs toposnap-controller routed to this node or its zone (needs toposnap-controller)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	opts.QPS = float32(qps)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := snapshotter.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Snapshotter failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
