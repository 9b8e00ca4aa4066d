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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
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
func ServeMetrics(ctx context.Context, address string, registry *prometheus.Registry) error {
	if address == "" {
		return nil
	}
	registry.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", address, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
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
