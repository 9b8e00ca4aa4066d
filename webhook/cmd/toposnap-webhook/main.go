// Command toposnap-webhook serves toposnap's admission webhooks over
// HTTPS: see package webhook.
package main

import (
	"context"
	"flag"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/webhook"
)

func main() {
	var opts webhook.Options
	flag.StringVar(&opts.Listen, "listen", ":9443", "HTTPS address to serve the webhooks, /healthz and /metrics on")
	flag.StringVar(&opts.TLSCertFile, "tls-cert-file", "", "serving certificate (PEM), reloaded when it changes; required")
	flag.StringVar(&opts.TLSKeyFile, "tls-key-file", "", "serving private key (PEM), reloaded when it changes; required")
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig (empty: in-cluster)")
	flag.DurationVar(&opts.ShutdownGrace, "shutdown-grace", 10*time.Second, "how long requests in flight may take after SIGTERM")
	flag.StringVar(&opts.SchedulerName, "scheduler-name", "", "scheduler (configured with toposnap's extender) that "+webhook.PathMutatePod+
		" moves pods using toposnap StorageClasses to, when they name none or default-scheduler; empty: pods are left alone")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := webhook.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Webhook failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.InfoS("Webhook stopped")
	klog.Flush()
}
