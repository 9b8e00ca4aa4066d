// Command toposnap-driver is toposnap's CSI plugin (Identity, Controller and
// Node services) for one node: see package driver.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver"
)

var version = "dev"

func main() {
	var opts driver.Options
	capacity := resource.MustParse("100Gi")
	var zoneCapacity resource.Quantity
	flag.StringVar(&opts.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix:///path)")
	flag.StringVar(&opts.NodeID, "node-id", os.Getenv("NODE_NAME"), "this node's id (its Kubernetes node name)")
	flag.StringVar(&opts.DataDir, "data-dir", "/var/lib/toposnap/node", "directory of the node pool")
	flag.StringVar(&opts.ZoneDataDir, "zone-data-dir", "", "directory of the zone's shared pool (empty: no zone pool)")
	flag.Var(quantityFlag{&capacity}, "capacity", "capacity of each pool, e.g. 100Gi")
	flag.Var(quantityFlag{&zoneCapacity}, "zone-capacity", "capacity of the zone pool (default: --capacity)")
	flag.StringVar(&opts.Backend, "backend", "auto", "node pool backend: auto (btrfs where the pool is on btrfs, else dir), btrfs or dir")
	flag.StringVar(&opts.ZoneBackend, "zone-backend", "auto", "zone pool backend: auto, btrfs or dir")
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig to read this node's zone and region labels")
	flag.BoolVar(&opts.InCluster, "in-cluster", false, "read this node's labels with the pod's service account")
	flag.StringVar(&opts.Zone, "zone", "", "this node's zone when its labels cannot be read")
	flag.StringVar(&opts.Region, "region", "", "this node's region when its labels cannot be read")
	flag.DurationVar(&opts.SnapshotWait, "snapshot-wait", 2*time.Second, "how long CreateSnapshot waits before answering not-ready")
	flag.StringVar(&opts.MetricsAddress, "metrics-address", "", "serve /metrics and /healthz here (empty: off)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	opts.Capacity, opts.ZoneCapacity, opts.Version = capacity.Value(), zoneCapacity.Value(), version

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := driver.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Driver failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}

// quantityFlag parses a Kubernetes quantity such as 10Gi.
type quantityFlag struct{ q *resource.Quantity }

func (f quantityFlag) String() string {
	if f.q == nil {
		return ""
	}
	return f.q.String()
}

func (f quantityFlag) Set(value string) error {
	q, err := resource.ParseQuantity(value)
	if err != nil {
		return err
	}
	*f.q = q
	return nil
}
