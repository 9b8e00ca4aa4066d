package extender

import (
	"context"
	"crypto/tls"
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
	// ClientCAFile, when set, holds the CAs (PEM) whose client
	// certificates the extender requires of every caller (kube-scheduler's
	// extender tlsConfig certFile/keyFile); reloaded when it changes.
	ClientCAFile string
	// HealthListen, when set, also serves /healthz, /readyz and /metrics
	// (only those) in plain HTTP there: the kubelet's probes and
	// Prometheus present no client certificate.
	HealthListen string
	DriverName   string
	Resync       time.Duration
	// PromiseTTL is how long a pending claim's selected-node holds its
	// node's capacity (see promiseHolds; 0: for ever).
	PromiseTTL time.Duration
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
	if opts.ClientCAFile != "" && opts.TLSCertFile == "" {
		return errClientCAWithoutTLS
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tlsConfig, err := serverTLS(ctx, opts)
	if err != nil {
		return err
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
	notes := &promiseNotes{now: time.Now}
	kubeInformers := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, informers.WithTransform(notes.transform))
	snapshotAPI := kube.NewSnapshotAPIWatch(client.Discovery())
	snapshots := kube.NewSnapshotCaches(snapshotAPI, snapClient, opts.Resync, registerSnapshotInformers)
	state, err := newInformerState(kubeInformers, snapshots)
	if err != nil {
		return err
	}
	notes.claims, state.promiseTTL = state.claimIndex, opts.PromiseTTL
	listener, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Listen, err)
	}
	var healthListener net.Listener
	if opts.HealthListen != "" {
		if healthListener, err = net.Listen("tcp", opts.HealthListen); err != nil {
			listener.Close()
			return fmt.Errorf("listen on %s: %w", opts.HealthListen, err)
		}
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
			if healthListener != nil {
				healthListener.Close()
			}
			return err
		}
		defer stopExplaining()
	}

	server := NewServer(func() State { return state }, opts.DriverName)
	handler := server.Handler()
	httpServer := newHTTPServer(handler, tlsConfig)
	errs := make(chan error, 2)
	var healthServer *http.Server
	if healthListener != nil {
		healthServer = newHTTPServer(probesOnly(handler), nil)
		go func() {
			klog.InfoS("Extender serving probes and metrics", "address", healthListener.Addr().String())
			errs <- healthServer.Serve(healthListener)
		}()
	}
	go func() {
		klog.InfoS("Extender serving", "address", listener.Addr().String(), "tls", tlsConfig != nil,
			"clientCertificates", opts.ClientCAFile != "", "driver", opts.DriverName)
		if tlsConfig != nil {
			errs <- httpServer.ServeTLS(listener, "", "")
		} else {
			errs <- httpServer.Serve(listener)
		}
	}()
	select {
	case err := <-errs:
		_ = httpServer.Close() // serving already failed; its error is the one to return
		if healthServer != nil {
			_ = healthServer.Close()
		}
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	if healthServer != nil {
		defer healthServer.Shutdown(shutdownCtx) //nolint:errcheck // the main server's result is the one that counts
	}
	return httpServer.Shutdown(shutdownCtx)
}

// probesOnly lets through to handler the GETs of /healthz, /readyz and
// /metrics, and nothing else: the port it serves needs no client
// certificate.
func probesOnly(handler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz", "/readyz", "/metrics":
			if r.Method == http.MethodGet {
				handler.ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, r.URL.Path+" is not served on the probe port", http.StatusNotFound)
	})
}

// How long a caller may take: to send its request headers, its whole
// request (the TLS handshake included), to be answered, and between
// requests on a kept-alive connection. kube-scheduler sends a request of
// at most MaxBodyBytes at once and gives up after its httpTimeout (5 s by
// default), so these only cut off callers who stall; a stalled body keeps
// its in-flight slot (maxInFlight) no longer than readTimeout.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 15 * time.Second // from the end of the headers: reading the body, deciding, answering
	idleTimeout       = 90 * time.Second // kube-scheduler's HTTP client keeps connections 90 s
)

// newHTTPServer serves handler (over TLS when tlsConfig is set) with the
// timeouts above.
func newHTTPServer(handler http.Handler, tlsConfig *tls.Config) *http.Server {
	return &http.Server{
		Handler: handler, TLSConfig: tlsConfig,
		// HTTP/1.1 only (see internal/certs): a non-nil empty map keeps
		// net/http from adding HTTP/2.
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout, WriteTimeout: writeTimeout, IdleTimeout: idleTimeout,
		ErrorLog: klog.NewStandardLogger("INFO"),
	}
}

// serverTLS loads the serving pair and, with opts.ClientCAFile, the CAs
// callers' certificates must chain to, and follows their files until ctx
// ends. nil: plain HTTP.
func serverTLS(ctx context.Context, opts Options) (*tls.Config, error) {
	if opts.TLSCertFile == "" {
		return nil, nil
	}
	certificates, err := certs.NewServing(opts.TLSCertFile, opts.TLSKeyFile)
	if err != nil {
		return nil, err
	}
	if opts.ClientCAFile == "" {
		go certificates.Run(ctx)
		return certificates.TLSConfig(), nil
	}
	clients, err := certs.NewClientCAs(opts.ClientCAFile)
	if err != nil {
		return nil, err
	}
	go certificates.Run(ctx)
	go clients.Run(ctx)
	return certificates.TLSConfigRequiring(clients), nil
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
		e.leader = &kube.Holder{OnStart: func(context.Context) { e.enqueueAll() }}
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
