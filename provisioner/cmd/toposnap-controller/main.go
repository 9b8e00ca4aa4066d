// Command toposnap-controller is toposnap's central controller: see package
// provisioner/central.
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

	"github.com/toposnap/toposnap/provisioner/central"
)

func main() {
	var opts central.Options
	hostname, _ := os.Hostname()
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig (empty: in-cluster)")
	flag.StringVar(&opts.DriverName, "driver-name", "csi.toposnap.io", "the CSI driver whose objects are routed")
	flag.IntVar(&opts.Workers, "workers", 4, "concurrent objects handled")
	flag.DurationVar(&opts.Resync, "resync", 10*time.Minute, "informer resync period")
	var qps float64
	flag.Float64Var(&qps, "kube-api-qps", 50, "API requests per second, sustained (client-side limit)")
	flag.IntVar(&opts.Burst, "kube-api-burst", 100, "API requests in a burst above --kube-api-qps")
	flag.StringVar(&opts.MetricsAddress, "metrics-address", "", "serve /metrics, /healthz and /readyz here (empty: off)")
	flag.StringVar(&opts.Namespace, "namespace", kube.EnvOr("POD_NAMESPACE", "kube-system"), "namespace of the leader Lease and of CSIStorageCapacity objects")
	flag.StringVar(&opts.LeaseName, "leader-election-lease", "toposnap-controller", "the leader-election Lease")
	flag.StringVar(&opts.Identity, "leader-election-identity", kube.EnvOr("POD_NAME", hostname), "this replica's name in the Lease")
	flag.DurationVar(&opts.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a leader's Lease lasts unrenewed")
	flag.DurationVar(&opts.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader tries to renew before it steps down")
	flag.DurationVar(&opts.RetryPeriod, "leader-election-retry-period", 2*time.Second, "how often a standby tries to take the Lease")
	flag.DurationVar(&opts.CapacityInterval, "capacity-interval", time.Minute, "how often CSIStorageCapacity of deleted classes is removed (0: never)")
	flag.IntVar(&opts.LeaseCandidates, "lease-candidates", 3, "how many of a zone's nodes (with the driver registered) may campaign for each of its Leases; 0: all of them")
	flag.BoolVar(&opts.SnapshotBinder, "snapshot-binder", false, "bind VolumeSnapshots to contents, as the upstream snapshot-controller does (only where none runs)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	opts.QPS = float32(qps)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := central.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "toposnap-controller stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
