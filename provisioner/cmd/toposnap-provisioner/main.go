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

	"github.com/toposnap/toposnap/internal/kube"

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
	var qps float64
	flag.Float64Var(&qps, "kube-api-qps", 20, "API requests per second, sustained (client-side limit)")
	flag.IntVar(&opts.Burst, "kube-api-burst", 50, "API requests in a burst above --kube-api-qps")
	flag.StringVar(&opts.MetricsAddress, "metrics-address", "", "serve /metrics and /healthz here (empty: off)")
	flag.StringVar(&opts.CapacityNamespace, "capacity-namespace", kube.EnvOr("POD_NAMESPACE", "kube-system"), "namespace of CSIStorageCapacity objects and zone Leases")
	flag.DurationVar(&opts.CapacityInterval, "capacity-interval", time.Minute, "how often CSIStorageCapacity is refreshed (0: never)")
	flag.DurationVar(&opts.OrphanInterval, "orphan-interval", 5*time.Minute, "how often unreferenced volumes are looked for (0: never)")
	flag.DurationVar(&opts.OrphanGrace, "orphan-grace", 10*time.Minute, "how long a volume may go unreferenced before it is an orphan")
	flag.BoolVar(&opts.DeleteOrphans, "delete-orphans", false, "delete orphan volumes instead of only reporting them: only those recorded with reclaim policy Delete whose claim is older than the PV list they were compared with (Retain, unrecorded and younger volumes are only reported)")
	flag.BoolVar(&opts.Routed, "routed", false, "watch only the claims, PVs and snapshots toposnap-controller routed to this node or its zone (needs toposnap-controller)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	opts.QPS = float32(qps)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := provisioner.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Provisioner failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
