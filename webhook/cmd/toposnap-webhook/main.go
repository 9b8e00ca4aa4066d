// Command toposnap-webhook serves toposnap's admission webhooks over
// HTTPS: see package webhook.
package main

import (
	"context"
	"flag"
	"os/signal"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/webhook"
)

func main() {
	var opts webhook.Options
	flag.StringVar(&opts.Listen, "listen", ":9443", "HTTPS address to serve the webhooks, /healthz and /metrics on")
	flag.StringVar(&opts.TLSCertFile, "tls-cert-file", "", "serving certificate (PEM), reloaded when it changes; required")
	flag.StringVar(&opts.TLSKeyFile, "tls-key-file", "", "serving private key (PEM), reloaded when it changes; required")
	flag.StringVar(&opts.ClientCAFile, "client-ca-file", "", "require of every caller a client certificate signed by a CA in this bundle (PEM), reloaded when it changes; "+
		"the API server presents one only when its AdmissionConfiguration names a kubeconfig for this webhook (empty: any caller)")
	flag.StringVar(&opts.HealthListen, "health-listen", "", "also serve /healthz, /readyz and /metrics (only those) in plain HTTP on this address, for probes that present no client certificate (empty: only on --listen)")
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig (empty: in-cluster)")
	flag.DurationVar(&opts.ShutdownGrace, "shutdown-grace", 10*time.Second, "how long requests in flight may take after SIGTERM")
	flag.StringVar(&opts.Pods.SchedulerName, "scheduler-name", "", "scheduler (configured with toposnap's extender) that "+webhook.PathMutatePod+
		" moves pods using toposnap StorageClasses to, when they name none or default-scheduler; empty: pods keep their scheduler")
	var volumeResource string
	flag.StringVar(&volumeResource, "volume-resource", "", "extended resource (e.g. "+string(webhook.VolumeResource)+") "+webhook.PathMutatePod+
		" gives pods using toposnap StorageClasses, so that a scheduler listing it under its extender's managedResources (ignoredByScheduler: true) "+
		"asks the extender about those pods only; empty: none")
	var resourceSchedulers string
	flag.StringVar(&resourceSchedulers, "volume-resource-schedulers", "", "comma-separated schedulers configured with --volume-resource under managedResources "+
		"(--scheduler-name is one); pods bound for other schedulers never get the resource, which those would look for on nodes")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	opts.Pods.VolumeResource = corev1.ResourceName(volumeResource)
	for _, name := range strings.Split(resourceSchedulers, ",") {
		if name = strings.TrimSpace(name); name != "" {
			opts.Pods.ResourceSchedulers = append(opts.Pods.ResourceSchedulers, name)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := webhook.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "Webhook failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.InfoS("Webhook stopped")
	klog.Flush()
}
