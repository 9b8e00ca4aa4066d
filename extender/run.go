package extender

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
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
	// ExplainPending posts the extender's reasons as FailedScheduling events
	// on unschedulable pods whose volumes fit no node (see explainer).
	ExplainPending bool
	// LeaderElect: of several replicas, only the holder of a Lease in
	// LeaderElectionNamespace explains (every replica serves requests).
	LeaderElect             bool
	LeaderElectionNamespace string
}

// ExplainerLease is the Lease replicas campaign for with --leader-elect.
const ExplainerLease = "toposnap-extender-explainer"

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
	if opts.ExplainPending {
		stopExplaining, err := startExplainer(ctx, client, state, opts)
		if err != nil {
			return err
		}
		defer stopExplaining()
	}

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

// startExplainer watches pods not yet bound to a node and explains the
// unschedulable ones whose volumes fit nowhere.
func startExplainer(ctx context.Context, client kubernetes.Interface, state *informerState, opts Options) (func(), error) {
	pending := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, informers.WithTransform(kube.StripManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" }))
	recorder, stopEvents := kube.Recorder(client, "toposnap-extender", "")
	e := &explainer{state: state, driver: opts.DriverName, pods: pending.Core().V1().Pods().Lister(), nodes: state.nodes,
		recorder: recorder, queue: kube.NewQueue("explain"), told: map[string]string{}}
	if opts.LeaderElect {
		// A new leader looks again at every pending pod: the old one may have
		// explained them, or died before it did.
		e.leader = &kube.Holder{OnStart: e.enqueueAll}
		identity, err := os.Hostname()
		if err != nil {
			stopEvents()
			return nil, fmt.Errorf("leader election identity: %w", err)
		}
		go e.leader.Campaign(ctx, client, opts.LeaderElectionNamespace, ExplainerLease, identity+"_"+string(uuid.NewUUID()))
	}
	podInformer := pending.Core().V1().Pods().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    e.enqueue,
		UpdateFunc: func(_, obj any) { e.enqueue(obj) },
		DeleteFunc: e.forget,
	}); err != nil {
		stopEvents()
		return nil, fmt.Errorf("watch pending pods: %w", err)
	}
	pending.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced) {
		stopEvents()
		pending.Shutdown()
		return nil, errors.New("pending pods cache did not sync")
	}
	go e.run(ctx)
	return func() { pending.Shutdown(); stopEvents() }, nil
}
