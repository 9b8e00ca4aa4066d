// Package kube holds the client plumbing every toposnap controller shares:
// REST config from flags, lean informers, an event recorder, and the
// connection to the node's CSI driver.
package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/connection"
	"github.com/kubernetes-csi/csi-lib-utils/rpc"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotscheme "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/scheme"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
)

// RestConfig loads a kubeconfig, or the in-cluster config when path is empty.
func RestConfig(path string) (*rest.Config, error) {
	if path == "" {
		config, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not in a cluster: %w", err)
		}
		return config, nil
	}
	config, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return config, nil
}

// StripManagedFields is an informer transform that drops what controllers
// never read, so a node-deployed watch of every PVC stays small.
func StripManagedFields(obj any) (any, error) {
	if accessor, err := meta.Accessor(obj); err == nil {
		accessor.SetManagedFields(nil)
	}
	return obj, nil
}

// Recorder returns an event recorder for component; stop it with the func.
func Recorder(client kubernetes.Interface, component, node string) (record.EventRecorder, func()) {
	broadcaster := record.NewBroadcaster()
	broadcaster.StartStructuredLogging(4)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(EventScheme(), corev1.EventSource{Component: component, Host: node})
	return recorder, broadcaster.Shutdown
}

// EventScheme knows the core types and the snapshot API's, so events can
// name VolumeSnapshots and VolumeSnapshotContents (with client-go's scheme
// alone they are dropped: "no kind is registered").
func EventScheme() *runtime.Scheme {
	eventScheme := runtime.NewScheme()
	utilruntime.Must(scheme.AddToScheme(eventScheme))
	utilruntime.Must(snapshotscheme.AddToScheme(eventScheme))
	return eventScheme
}

// Driver is the node's CSI driver as a controller sees it.
type Driver struct {
	Conn    *grpc.ClientConn
	Name    string
	Segment topology.Segment
}

// ConnectDriver dials the CSI socket (retrying until ctx ends), and reads
// the driver's name and this node's topology segment.
func ConnectDriver(ctx context.Context, address string) (*Driver, error) {
	conn, err := connection.Connect(ctx, address, nil, connection.OnConnectionLoss(connection.ExitOnConnectionLoss()))
	if err != nil {
		return nil, fmt.Errorf("connect to CSI driver at %s: %w", address, err)
	}
	if err := rpc.ProbeForever(ctx, conn, 10*time.Second); err != nil {
		return nil, fmt.Errorf("probe CSI driver: %w", err)
	}
	name, err := rpc.GetDriverName(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("read CSI driver name: %w", err)
	}
	info, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("read node topology from CSI driver: %w", err)
	}
	return &Driver{Conn: conn, Name: name, Segment: topology.Segment(info.GetAccessibleTopology().GetSegments())}, nil
}

// ServeMetrics serves /metrics (registry plus Go and process collectors),
// /healthz and /readyz on address until ctx ends. An empty address serves
// nothing. /healthz answers 503 with the reason while healthy (if not nil)
// fails, so a liveness probe restarts a process whose driver is gone.
// /readyz answers the same as /healthz.
func ServeMetrics(ctx context.Context, address string, registry *prometheus.Registry, healthy func(context.Context) error) error {
	return ServeProbes(ctx, address, registry, Probes{Healthy: healthy})
}

// Probes are what /healthz and /readyz check; a nil func passes.
type Probes struct {
	// Healthy fails when the process should be restarted (liveness).
	Healthy func(context.Context) error
	// Ready fails while the process cannot do its work yet: waiting for
	// the API server, its caches or an API it needs (readiness). /readyz
	// checks Healthy too.
	Ready func(context.Context) error
}

// ServeProbes is ServeMetrics with a readiness check of its own.
func ServeProbes(ctx context.Context, address string, registry *prometheus.Registry, probes Probes) error {
	if address == "" {
		return nil
	}
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", address, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", probeHandler(probes.Healthy))
	mux.Handle("/readyz", probeHandler(probes.Healthy, probes.Ready))
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdownCtx)
	}()
	go func() {
		if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Metrics server failed")
		}
	}()
	return nil
}

// probeHandler answers "ok", or 503 with the first failing check's error.
func probeHandler(checks ...func(context.Context) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probeCtx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		for _, check := range checks {
			if check == nil {
				continue
			}
			if err := check(probeCtx); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	})
}

// ErrRequeue asks a worker to look at a key again after RequeueAfter,
// without counting a failure (something is in progress, not broken).
var ErrRequeue = errors.New("not done yet")

// RequeueAfter is how soon an ErrRequeue key comes back.
const RequeueAfter = 2 * time.Second

// NewQueue is a workqueue of keys with per-item exponential backoff 1s→5m.
func NewQueue(name string) workqueue.TypedRateLimitingInterface[string] {
	return workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: name})
}

// Work takes keys from queue and syncs them until the queue shuts down:
// success forgets the key's failures, ErrRequeue looks again soon, any other
// error retries with backoff.
func Work(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], sync func(context.Context, string) error) {
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return
		}
		err := sync(ctx, key)
		switch {
		case err == nil:
			queue.Forget(key)
		case errors.Is(err, ErrRequeue):
			queue.Forget(key)
			queue.AddAfter(key, RequeueAfter)
		default:
			klog.V(2).InfoS("Sync failed, retrying with backoff", "queue", queue, "key", key, "err", err)
			queue.AddRateLimited(key)
		}
		queue.Done(key)
	}
}

// Env is what a node-deployed controller needs: API clients, lean informer
// factories, an event recorder and the node's CSI driver.
type Env struct {
	Client    kubernetes.Interface
	Snapshots snapshotclient.Interface
	// KubeInformers and SnapInformers are the factories the controller
	// registers its informers on before Start. SnapInformers' lists and
	// watches follow SnapshotAPI (see GatedSnapshots), so its informers
	// sync, empty, while the snapshot CRDs are not installed.
	KubeInformers informers.SharedInformerFactory
	SnapInformers snapshotinformers.SharedInformerFactory
	// Informers are what a node's controllers watch: with Routed, claims,
	// PVs, snapshots and contents routed to the node or its zone, and the
	// node's own Node; else the whole cluster (KubeInformers and
	// SnapInformers for everything).
	Informers Informers
	// SnapshotAPI follows whether the snapshot API is served.
	SnapshotAPI *APIWatch
	Recorder    record.EventRecorder
	Driver      *Driver
	// Registry is served on --metrics-address; components add their series.
	Registry *prometheus.Registry
	stop     []func()
	synced   atomic.Bool // every informer started by Start has synced
	// zone is the zone's route with EnvOptions.ZoneOnLease ("" without).
	zone   string
	resync time.Duration
}

// ZoneInformers are fresh factories over the zone's objects (claims and
// PVs, snapshots and contents routed to the zone), beside the Env's class
// and own-Node factories; ok is false without EnvOptions.ZoneOnLease or a
// zone. ZoneTerms starts them after Term registered its informers, and
// shuts them down at the term's end.
func (e *Env) ZoneInformers() (zone Informers, ok bool) {
	if e.zone == "" {
		return Informers{}, false
	}
	selector := labels.SelectorFromSet(labels.Set{route.Label: e.zone}).String()
	routed := func(o *metav1.ListOptions) { o.LabelSelector = selector }
	zone = e.Informers
	zone.Routed = informers.NewSharedInformerFactoryWithOptions(e.Client, e.resync,
		informers.WithTransform(StripManagedFields), informers.WithTweakListOptions(routed))
	zone.RoutedSnaps = snapshotinformers.NewSharedInformerFactoryWithOptions(GatedSnapshots(e.Snapshots, e.SnapshotAPI), e.resync,
		snapshotinformers.WithTransform(StripManagedFields), snapshotinformers.WithTweakListOptions(routed))
	return zone, true
}

// StartZone starts ZoneInformers' own factories until ctx ends (Term
// calls it once its informers are registered). The shared ones are the
// Env's to start: an informer a term registers first on them would stop
// with the term and never start again.
func (e *Env) StartZone(ctx context.Context, zone Informers) {
	zone.Routed.Start(ctx.Done())
	zone.RoutedSnaps.Start(ctx.Done())
}

// EnvOptions are the flags every node-deployed controller shares.
type EnvOptions struct {
	Kubeconfig, CSIAddress, Component, NodeName, MetricsAddress string
	Resync                                                      time.Duration
	// QPS and Burst limit the API client (--kube-api-qps,
	// --kube-api-burst); 0 keeps client-go's 5 and 10.
	QPS   float32
	Burst int
	// Routed: watch only the objects the central controller routed to this
	// node (and to its zone, when the driver reports one), and only this
	// node's Node.
	Routed bool
	// ZoneOnLease (with Routed): the node's informers leave the zone's
	// objects out; ZoneInformers watches them, for the zone Lease's holder.
	ZoneOnLease bool
}

// Informers are the factories a node-deployed controller registers on, by
// what it watches. Routed* and Self are selected factories on a routed node;
// on an unrouted one every field is the same whole-cluster factory.
type Informers struct {
	// Routed holds claims and PVs; RoutedSnaps snapshots and contents.
	Routed      informers.SharedInformerFactory
	RoutedSnaps snapshotinformers.SharedInformerFactory
	// Cluster holds what every node needs whole: StorageClasses (and
	// VolumeSnapshotClasses in ClusterSnaps).
	Cluster      informers.SharedInformerFactory
	ClusterSnaps snapshotinformers.SharedInformerFactory
	// Self holds the node's own Node.
	Self informers.SharedInformerFactory
}

// SameInformers are Informers that all watch the whole cluster.
func SameInformers(kubeInformers informers.SharedInformerFactory, snapInformers snapshotinformers.SharedInformerFactory) Informers {
	return Informers{Routed: kubeInformers, RoutedSnaps: snapInformers, Cluster: kubeInformers, ClusterSnaps: snapInformers, Self: kubeInformers}
}

// factory is what Start needs of an informer factory.
type factory interface {
	Start(<-chan struct{})
	Shutdown()
	WaitForCacheSync(<-chan struct{}) map[reflect.Type]bool
}

// factories are the distinct factories, to start and wait for.
func (i Informers) factories() []factory {
	var out []factory
	for _, f := range []factory{i.Routed, i.RoutedSnaps, i.Cluster, i.ClusterSnaps, i.Self} {
		if f != nil && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// NewEnv connects to the API server and the CSI driver and serves metrics
// and probes: /healthz probes the driver, /readyz also waits for the
// informer caches (see Start). Nothing here needs the API server to
// answer: informers retry until it does. Close releases it.
func NewEnv(ctx context.Context, opts EnvOptions) (*Env, error) {
	if opts.NodeName == "" {
		return nil, errors.New("--node-name is required")
	}
	config, err := RestConfig(opts.Kubeconfig)
	if err != nil {
		return nil, err
	}
	config.QPS, config.Burst = opts.QPS, opts.Burst
	env := &Env{Registry: prometheus.NewRegistry(), resync: opts.Resync}
	if env.Client, err = kubernetes.NewForConfig(config); err != nil {
		return nil, fmt.Errorf("create API client: %w", err)
	}
	if env.Snapshots, err = snapshotclient.NewForConfig(config); err != nil {
		return nil, fmt.Errorf("create snapshot API client: %w", err)
	}
	if env.Driver, err = ConnectDriver(ctx, opts.CSIAddress); err != nil {
		return nil, err
	}
	env.stop = append(env.stop, func() { env.Driver.Conn.Close() })
	recorder, stopEvents := Recorder(env.Client, opts.Component, opts.NodeName)
	env.Recorder = recorder
	env.stop = append(env.stop, stopEvents)
	identity := csi.NewIdentityClient(env.Driver.Conn)
	probe := func(ctx context.Context) error {
		resp, err := identity.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			return fmt.Errorf("CSI driver at %s: %w", opts.CSIAddress, err)
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			return fmt.Errorf("CSI driver at %s is not ready", opts.CSIAddress)
		}
		return nil
	}
	if err := ServeProbes(ctx, opts.MetricsAddress, env.Registry, Probes{Healthy: probe, Ready: env.ready}); err != nil {
		env.Close()
		return nil, err
	}
	env.SnapshotAPI = NewSnapshotAPIWatch(env.Client.Discovery())
	env.KubeInformers = informers.NewSharedInformerFactoryWithOptions(env.Client, opts.Resync, informers.WithTransform(StripManagedFields))
	gated := GatedSnapshots(env.Snapshots, env.SnapshotAPI)
	env.SnapInformers = snapshotinformers.NewSharedInformerFactoryWithOptions(gated,
		opts.Resync, snapshotinformers.WithTransform(StripManagedFields))
	env.Informers = SameInformers(env.KubeInformers, env.SnapInformers)
	if opts.Routed {
		zone := route.ZoneOf(env.Driver.Segment[topology.RegionKey], env.Driver.Segment[topology.ZoneKey])
		if opts.ZoneOnLease && zone != "" {
			env.zone = route.Zone(zone)
			zone = ""
		}
		selector := route.Selector(opts.NodeName, zone).String()
		routed := func(o *metav1.ListOptions) { o.LabelSelector = selector }
		env.Informers.Routed = informers.NewSharedInformerFactoryWithOptions(env.Client, opts.Resync,
			informers.WithTransform(StripManagedFields), informers.WithTweakListOptions(routed))
		env.Informers.RoutedSnaps = snapshotinformers.NewSharedInformerFactoryWithOptions(gated, opts.Resync,
			snapshotinformers.WithTransform(StripManagedFields), snapshotinformers.WithTweakListOptions(routed))
		self := fields.OneTermEqualSelector("metadata.name", opts.NodeName).String()
		env.Informers.Self = informers.NewSharedInformerFactoryWithOptions(env.Client, opts.Resync,
			informers.WithTransform(StripManagedFields), informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = self }))
		klog.InfoS("Watching routed objects only", "selector", selector, "node", opts.NodeName)
	}
	return env, nil
}

// Start follows the snapshot API and starts the informer factories; Close
// shuts them down. Register informers before Start: readiness waits for
// those.
func (e *Env) Start(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	go e.SnapshotAPI.Run(ctx)
	factories := e.Informers.factories()
	for _, factory := range factories {
		factory.Start(ctx.Done())
		e.stop = append(e.stop, factory.Shutdown)
	}
	e.stop = append(e.stop, cancel)
	go func() {
		for _, factory := range factories {
			for _, synced := range factory.WaitForCacheSync(ctx.Done()) {
				if !synced {
					return
				}
			}
		}
		e.synced.Store(true)
		klog.InfoS("Informer caches filled")
	}()
}

// ready is /readyz's check: the informer caches are filled.
func (e *Env) ready(context.Context) error {
	if e.synced.Load() {
		return nil
	}
	if e.SnapshotAPI != nil {
		if presence, reason, _ := e.SnapshotAPI.State(); presence == PresenceUnknown {
			return fmt.Errorf("waiting for the informer caches; snapshot API: %s", reason)
		}
	}
	return errors.New("waiting for the informer caches to fill (is the API server reachable?)")
}

// Close releases everything NewEnv and Start set up, last first.
func (e *Env) Close() {
	for i := len(e.stop) - 1; i >= 0; i-- {
		e.stop[i]()
	}
}

// RegisterCacheSizes exports, as the gauge name{resource="..."}, how many
// objects each informer cache holds: on a routed node, its own objects
// only, whatever the size of the cluster. A nil registry exports nothing.
func RegisterCacheSizes(registry *prometheus.Registry, name string, stores map[string]cache.Store) {
	if registry == nil {
		return
	}
	for resource, store := range stores {
		registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        name,
			Help:        "Objects in this process's informer cache, by resource.",
			ConstLabels: prometheus.Labels{"resource": resource},
		}, func() float64 { return float64(len(store.ListKeys())) }))
	}
}

// EnvOr is the environment variable's value, or fallback when it is unset
// or empty: flag defaults from the downward API (POD_NAMESPACE, POD_NAME).
func EnvOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
