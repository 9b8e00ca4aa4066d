// Package webhook owns toposnap's admission webhook: it defaults
// topology-aware StorageClasses to WaitForFirstConsumer, rejects restores
// and clones that cannot work (missing or foreign snapshot, too small,
// unreachable topology), keeps one default VolumeSnapshotClass per
// driver and, optionally, moves pods that use toposnap volumes to a
// scheduler that consults toposnap's extender. Decisions are pure
// functions of a State read from informers (storageclass.go, pvc.go,
// snapshotclass.go, pod.go); server.go is the HTTPS edge.
package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/certs"
	"github.com/toposnap/toposnap/internal/kube"
)

// Options are the webhook's flags.
type Options struct {
	// Listen is the HTTPS address, e.g. ":9443".
	Listen string
	// TLSCertFile and TLSKeyFile hold the serving pair (PEM); both are
	// required and reloaded when they change.
	TLSCertFile, TLSKeyFile string
	// ClientCAFile, when set, holds the CAs (PEM) whose client
	// certificates the webhook requires of every caller: the API server
	// presents one when its AdmissionConfiguration gives it a kubeconfig
	// for this webhook (docs/security.md). Reloaded when it changes.
	ClientCAFile string
	// HealthListen, when set, also serves /healthz, /readyz and /metrics
	// (only those) in plain HTTP there: the kubelet's probes present no
	// client certificate.
	HealthListen string
	// Kubeconfig is the kubeconfig path; empty means in-cluster.
	Kubeconfig string
	// ShutdownGrace is how long requests in flight may take after SIGTERM.
	ShutdownGrace time.Duration
	// Pods says what PathMutatePod does to pods using toposnap volumes:
	// move them to a scheduler configured with toposnap's extender, and
	// give them VolumeResource for schedulers that manage it. The zero
	// value turns that route into a no-op.
	Pods PodOptions
}

// Run serves the webhook until ctx ends, then shuts down gracefully. It
// loads the serving pair (and follows its rotations), and serves at once:
// until the informer caches are filled, /readyz answers 503 and admission
// requests are refused with a message saying so, however long the API
// server takes to answer.
func Run(ctx context.Context, opts Options) error {
	if opts.TLSCertFile == "" || opts.TLSKeyFile == "" {
		return errors.New("--tls-cert-file and --tls-key-file are required: the API server calls webhooks over HTTPS only")
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	certificates, err := certs.NewServing(opts.TLSCertFile, opts.TLSKeyFile)
	if err != nil {
		return err
	}
	var clients *certs.ClientCAs
	if opts.ClientCAFile != "" {
		if clients, err = certs.NewClientCAs(opts.ClientCAFile); err != nil {
			return err
		}
	}
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create API client: %w", err)
	}
	snapshots, err := snapshotclient.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create snapshot API client: %w", err)
	}
	listener, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Listen, err)
	}
	certCtx, stopCertificates := context.WithCancel(ctx)
	defer stopCertificates()
	go certificates.Run(certCtx)
	tlsConfig := certificates.TLSConfig()
	if clients != nil {
		go clients.Run(certCtx)
		tlsConfig = certificates.TLSConfigRequiring(clients)
	}
	state, stopInformers := startInformers(ctx, client, snapshots)
	defer stopInformers()
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	handler := NewServer(state, registry, opts.Pods)
	if opts.HealthListen != "" {
		healthListener, err := net.Listen("tcp", opts.HealthListen)
		if err != nil {
			listener.Close()
			return fmt.Errorf("listen on %s: %w", opts.HealthListen, err)
		}
		go servePlain(certCtx, healthListener, probesOnly(handler))
	}
	klog.InfoS("Serving admission webhooks", "address", listener.Addr().String(), "clientCertificates", clients != nil,
		"routes", []string{PathMutateStorageClass, PathValidateClaim, PathValidateSnapshotClass, PathMutatePod},
		"schedulerName", opts.Pods.SchedulerName, "volumeResource", opts.Pods.VolumeResource, "resourceSchedulers", opts.Pods.ResourceSchedulers)
	return serve(ctx, listener, handler, tlsConfig, opts.ShutdownGrace)
}
