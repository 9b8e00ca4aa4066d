// Command registrar registers a CSI driver with the kubelet through the
// kubelet's plugin-registration protocol (pluginregistration/v1), as the
// upstream node-driver-registrar does; test/node runs it in the driver's pod
// because that upstream image cannot be built here. It asks the driver its
// name over --csi-address, serves Registration on
// <registration dir>/<driver>-reg.sock and tells the kubelet to dial
// --kubelet-registration-path. It accepts the upstream flags the chart
// passes, so the chart's DaemonSet runs it unchanged.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

func main() {
	var opts Options
	klog.InitFlags(nil)
	flag.StringVar(&opts.CSIAddress, "csi-address", "/csi/csi.sock", "path of the CSI driver's socket inside this container")
	flag.StringVar(&opts.KubeletRegistrationPath, "kubelet-registration-path", "", "path of the CSI driver's socket on the host, which the kubelet dials")
	flag.StringVar(&opts.RegistrationDir, "plugin-registration-path", "/registration", "the kubelet's plugins_registry directory inside this container")
	flag.StringVar(&opts.HTTPEndpoint, "http-endpoint", "", "address serving /healthz (empty: none)")
	flag.DurationVar(&opts.ConnectTimeout, "timeout", time.Second, "timeout of each CSI call")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Registrar failed")
		os.Exit(1)
	}
}
