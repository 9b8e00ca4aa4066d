// Command toposnap-provisioner provisions toposnap volumes for the node it
// runs on: see package provisioner.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/provisioner"
)

func main() {
	var opts provisioner.Options
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig (empty: in-cluster)")
	flag.StringVar(&opts.CSIAddress, "csi-address", "/csi/csi.sock", "the node's CSI driver socket")
	flag.StringVar(&opts.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name")
	flag.DurationVar(&opts.Timeout, "timeout", time.Minute, "timeout of one CSI call")
	flag.IntVar(&opts.Workers, "workers", 4, "concurrent claims and volumes handled")
	flag.DurationVar(&opts.Resync, "resync", 10*time.Minute, "informer resync period")
	flag.StringVar(&opts.MetricsAddress, "metrics-address", "", "serve /metrics and /healthz here (empty: off)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := provisioner.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Provisioner failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
