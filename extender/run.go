package extender

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/certs"
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

// Run serves the extender until ctx ends. It serves at once, whether or
// not the API server answers: /healthz says the process is alive, /readyz
// and the verbs' answers say what it still waits for (its caches, the
// snapshot API), and it picks the snapshot API up whenever it appears.
func Run(ctx context.Context, opts Options) error {
	if (opts.TLSCertFile == "") != (opts.TLSKeyFile == "") {
		return errNoTLS
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var certificates *certs.Serving
	if opts.TLSCertFile != "" {
		var err error
		if certificates, err = certs.NewServing(opts.TLSCertFile, opts.TLSKeyFile); err != nil {
			return err
		}
		go certificates.Run(ctx)
	}
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create API client: %w", err)
	}
	snapClient, err := snapshotclient.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create snapshot API client: %w", err)
	}
	kubeInformers := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, informers.WithTransform(kube.StripManagedFields))
	snapshotAPI := kube.NewSnapshotAPIWatch(client.Discovery())
	snapshots := kube.NewSnapshotCaches(snapshotAPI, snapClient, opts.Resync, registerSnapshotInformers)
	state, err := newInformerState(kubeInformers, snapshots)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Listen, err)
	}
	go snapshotAPI.Run(ctx)
	go snapshots.Run(ctx)
	kubeInformers.Start(ctx.Done())
	defer kubeInformers.Shutdown()
	go func() {
		if state.Load(ctx) {
			// The API server answers now: ask about snapshots at once
			// rather than at the next step of the error backoff.
			snapshotAPI.Recheck()
			state.Maintain(ctx)
		}
	}()
	if opts.ExplainPending {
		stopExplaining, err := startExplainer(ctx, client, state, opts)
		if err != nil {
			listener.Close()
			return err
		}
		defer stopExplaining()
	}

	server := NewServer(func() State { return state }, opts.DriverName)
	httpServer := &http.Server{Handler: server.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: klog.NewStandardLogger("INFO")}
	errs := make(chan error, 1)
	go func() {
		klog.InfoS("Extender serving", "address", listener.Addr().String(), "tls", certificates != nil, "driver", opts.DriverName)
		if certificates != nil {
			httpServer.TLSConfig = certificates.TLSConfig()
			errs <- httpServer.ServeTLS(listener, "", "")
		} else {
			errs <- httpServer.Serve(listener)
		}
	}()
	select {
	case err := <-errs:
		return fmt.Errorf("serve %s: %w", opts.Listen, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	return httpServer.Shutdown(shutdownCtx)
}

// startExplainer watches pods not yet bound to a node and, once they and
// state are loaded, explains the unschedulable ones whose volumes fit
// nowhere.
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
	go func() {
		// Nothing is explained from caches still filling.
		if cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced, state.loaded.Load) {
			e.run(ctx)
		}
	}()
	return func() { pending.Shutdown(); stopEvents() }, nil
}
