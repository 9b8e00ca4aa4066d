// Command toposnap-extender is toposnap's kube-scheduler extender: see
// package extender.
package main

import (
	"context"
	"flag"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/extender"
	"github.com/toposnap/toposnap/internal/kube"
)

func main() {
	var opts extender.Options
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig (empty: in-cluster)")
	flag.StringVar(&opts.Listen, "listen", ":8099", "address to serve /filter, /prioritize, /healthz, /readyz and /metrics on")
	flag.StringVar(&opts.TLSCertFile, "tls-cert-file", "", "serve HTTPS with this certificate (PEM), reloaded when it changes (empty: plain HTTP)")
	flag.StringVar(&opts.TLSKeyFile, "tls-key-file", "", "key of --tls-cert-file (PEM), reloaded when it changes")
	flag.StringVar(&opts.ClientCAFile, "client-ca-file", "", "require of every caller a client certificate signed by a CA in this bundle (PEM), reloaded when it changes; needs --tls-cert-file (empty: any caller)")
	flag.StringVar(&opts.HealthListen, "health-listen", "", "also serve /healthz, /readyz and /metrics (only those) in plain HTTP on this address, for probes and scrapers that present no client certificate (empty: only on --listen)")
	flag.StringVar(&opts.DriverName, "driver-name", "csi.toposnap.io", "CSI driver whose capacity and snapshots are considered")
	flag.DurationVar(&opts.Resync, "resync", 10*time.Minute, "informer resync period")
	flag.DurationVar(&opts.PromiseTTL, "promise-ttl", extender.DefaultPromiseTTL, "how long a pending claim's volume.kubernetes.io/selected-node holds that node's capacity after it was written (0: until the claim is bound)")
	flag.BoolVar(&opts.LeaderElect, "leader-elect", false, "with several replicas: only the holder of a Lease explains pending pods")
	flag.StringVar(&opts.LeaderElectionNamespace, "leader-election-namespace", kube.EnvOr("POD_NAMESPACE", "kube-system"), "namespace of the --leader-elect Lease")
	flag.BoolVar(&opts.ExplainPending, "explain-pending", true, "post the extender's reasons as FailedScheduling events on unschedulable pods whose volumes fit no node")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := extender.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Extender failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
