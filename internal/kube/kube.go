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
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/connection"
	"github.com/kubernetes-csi/csi-lib-utils/rpc"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

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
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: node})
	return recorder, broadcaster.Shutdown
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

// ServeMetrics serves /metrics (registry plus Go and process collectors) and
// /healthz on address until ctx ends. An empty address serves nothing.
// /healthz answers 503 with the reason while healthy (if not nil) fails, so
// a liveness probe restarts a process whose driver is gone.
func ServeMetrics(ctx context.Context, address string, registry *prometheus.Registry, healthy func(context.Context) error) error {
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
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if healthy != nil {
			probeCtx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			if err := healthy(probeCtx); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	})
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
	Client        kubernetes.Interface
	Snapshots     snapshotclient.Interface
	KubeInformers informers.SharedInformerFactory
	SnapInformers snapshotinformers.SharedInformerFactory
	Recorder      record.EventRecorder
	Driver        *Driver
	// Registry is served on --metrics-address; components add their series.
	Registry *prometheus.Registry
	stop     []func()
}

// EnvOptions are the flags every node-deployed controller shares.
type EnvOptions struct {
	Kubeconfig, CSIAddress, Component, NodeName, MetricsAddress string
	Resync                                                      time.Duration
}

// NewEnv connects to the API server and the CSI driver and serves metrics.
// Close releases it.
func NewEnv(ctx context.Context, opts EnvOptions) (*Env, error) {
	if opts.NodeName == "" {
		return nil, errors.New("--node-name is required")
	}
	config, err := RestConfig(opts.Kubeconfig)
	if err != nil {
		return nil, err
	}
	env := &Env{Registry: prometheus.NewRegistry()}
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
	if err := ServeMetrics(ctx, opts.MetricsAddress, env.Registry, probe); err != nil {
		env.Close()
		return nil, err
	}
	env.KubeInformers = informers.NewSharedInformerFactoryWithOptions(env.Client, opts.Resync, informers.WithTransform(StripManagedFields))
	env.SnapInformers = snapshotinformers.NewSharedInformerFactoryWithOptions(env.Snapshots, opts.Resync, snapshotinformers.WithTransform(StripManagedFields))
	return env, nil
}

// Start starts the informer factories; Close shuts them down.
func (e *Env) Start(ctx context.Context) {
	e.KubeInformers.Start(ctx.Done())
	e.SnapInformers.Start(ctx.Done())
	e.stop = append(e.stop, e.KubeInformers.Shutdown, e.SnapInformers.Shutdown)
}

// Close releases everything NewEnv and Start set up, last first.
func (e *Env) Close() {
	for i := len(e.stop) - 1; i >= 0; i-- {
		e.stop[i]()
	}
}
