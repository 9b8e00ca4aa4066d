package extender

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
)

// Options configure the extender process.
type Options struct {
	Kubeconfig  string
	Listen      string
	TLSCertFile string
	TLSKeyFile  string
	DriverName  string
	Resync      time.Duration
}

// Run serves the extender until ctx ends.
func Run(ctx context.Context, opts Options) error {
	if (opts.TLSCertFile == "") != (opts.TLSKeyFile == "") {
		return errNoTLS
	}
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create API client: %w", err)
	}
	kubeInformers := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, informers.WithTransform(kube.StripManagedFields))
	var snapInformers snapshotinformers.SharedInformerFactory
	if _, err := client.Discovery().ServerResourcesForGroupVersion("snapshot.storage.k8s.io/v1"); err == nil {
		snapClient, err := snapshotclient.NewForConfig(config)
		if err != nil {
			return fmt.Errorf("create snapshot API client: %w", err)
		}
		snapInformers = snapshotinformers.NewSharedInformerFactoryWithOptions(snapClient, opts.Resync, snapshotinformers.WithTransform(kube.StripManagedFields))
	} else {
		klog.InfoS("Snapshot API not installed; restores are not placed by snapshot location", "err", err)
	}
	state, err := newInformerState(kubeInformers, snapInformers)
	if err != nil {
		return err
	}
	kubeInformers.Start(ctx.Done())
	defer kubeInformers.Shutdown()
	if snapInformers != nil {
		snapInformers.Start(ctx.Done())
		defer snapInformers.Shutdown()
	}
	if !cache.WaitForCacheSync(ctx.Done(), state.synced...) {
		return errors.New("informer caches did not sync")
	}
	state.rebuildNow()
	go state.Maintain(ctx)

	server := NewServer(func() State { return state }, opts.DriverName)
	httpServer := &http.Server{Addr: opts.Listen, Handler: server.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errs := make(chan error, 1)
	go func() {
		klog.InfoS("Extender serving", "address", opts.Listen, "tls", opts.TLSCertFile != "", "driver", opts.DriverName)
		if opts.TLSCertFile != "" {
			errs <- httpServer.ListenAndServeTLS(opts.TLSCertFile, opts.TLSKeyFile)
		} else {
			errs <- httpServer.ListenAndServe()
		}
	}()
	select {
	case err := <-errs:
		return fmt.Errorf("serve %s: %w", opts.Listen, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return httpServer.Shutdown(shutdownCtx)
}
