// Package driver is toposnap's CSI plugin: Identity, Controller and Node
// services on one unix socket, translating CSI requests into operations on
// the node pool and the zone pool (package store) and their errors into CSI
// codes. One file per service; the storage itself lives in driver/store.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// Name is the CSI driver name.
const Name = "csi.toposnap.io"

// Options configure the driver process.
type Options struct {
	// Endpoint is the CSI socket, "unix:///path/csi.sock".
	Endpoint string
	// NodeID is this node's id, usually its Kubernetes node name.
	NodeID string
	// DataDir holds the node pool; ZoneDataDir, when set, the zone's shared pool.
	DataDir     string
	ZoneDataDir string
	// Capacity of each pool in bytes; ZoneCapacity overrides it for the zone
	// pool. A pool never promises more than its filesystem holds either.
	Capacity     int64
	ZoneCapacity int64
	// Backend and ZoneBackend choose each pool's backend: store.BackendAuto
	// (btrfs where the pool is on btrfs, else dir; the default),
	// store.BackendBtrfs or store.BackendDir.
	Backend, ZoneBackend string
	// Kubeconfig, when set, is used to read this node's zone and region labels.
	// InCluster does the same with the pod's service account.
	Kubeconfig string
	InCluster  bool
	// Zone and Region are used when there is no API server to ask.
	Zone, Region string
	// SnapshotWait is how long CreateSnapshot waits for a copy before it
	// answers ready_to_use=false and lets the copy finish in the background.
	SnapshotWait time.Duration
	// MetricsAddress serves /metrics and /healthz when set.
	MetricsAddress string
	// Version is reported by GetPluginInfo.
	Version string

	// Pacing of the Node reads at start-up (tests shorten it).
	nodeRetryInitial, nodeRetryMax time.Duration
	// events, when set, posts Warning events on this node's Node object
	// (Run sets it when the driver has API access).
	events record.EventRecorder
}

// Driver implements the three CSI services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	opts     Options
	location topology.Location
	nodePool *store.Pool
	zonePool *store.Pool // nil without a zone pool
	mounter  mount.Interface
	metrics  *metrics
}

// New opens the pools for a known location. Run calls it; tests may too.
func New(opts Options, location topology.Location) (*Driver, error) {
	return newDriver(opts, location, newMetrics())
}

func newDriver(opts Options, location topology.Location, m *metrics) (*Driver, error) {
	if opts.NodeID == "" {
		return nil, errors.New("node id is required")
	}
	if opts.SnapshotWait <= 0 {
		opts.SnapshotWait = 2 * time.Second
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	d := &Driver{opts: opts, location: location, mounter: mount.New(""), metrics: m}
	var err error
	d.nodePool, err = store.Open(store.Config{
		Scope: topology.ScopeNode, Dir: opts.DataDir, Owner: location.Node,
		Capacity: opts.Capacity, Segment: location.VolumeSegment(topology.ScopeNode), Holder: opts.NodeID,
		BackendKind: opts.Backend, OnNestedCorrection: m.nestedCorrection("node"),
		OnUnrecovered: d.reportUnrecovered("node"),
	})
	if err != nil {
		return nil, fmt.Errorf("open node pool: %w", err)
	}
	if opts.ZoneDataDir != "" {
		if location.Zone == "" {
			return nil, errors.New("a zone pool needs the node's zone (label topology.kubernetes.io/zone or --zone)")
		}
		capacity := opts.ZoneCapacity
		if capacity == 0 {
			capacity = opts.Capacity
		}
		d.zonePool, err = store.Open(store.Config{
			Scope: topology.ScopeZone, Dir: opts.ZoneDataDir, Owner: location.Region + "/" + location.Zone,
			Capacity: capacity, Segment: location.VolumeSegment(topology.ScopeZone), Holder: opts.NodeID,
			BackendKind: opts.ZoneBackend, OnNestedCorrection: m.nestedCorrection("zone"),
			OnUnrecovered: d.reportUnrecovered("zone"),
		})
		if err != nil {
			return nil, fmt.Errorf("open zone pool: %w", err)
		}
	}
	m.watchRecovery(map[string]*store.Pool{"node": d.nodePool, "zone": d.zonePool})
	d.detachLeakedDevices()
	return d, nil
}

// reportUnrecovered posts a Warning event on this node's Node for each
// failed attempt to finish work a crash left in pool (the recorder folds
// repeats into a count): the object is named by its pool path, the PV or
// content by its volume or snapshot ID (their CSI handle).
func (d *Driver) reportUnrecovered(pool string) func(object string, err error) {
	return func(object string, err error) {
		if d.opts.events == nil {
			return
		}
		node := &corev1.ObjectReference{Kind: "Node", Name: d.location.Node, UID: types.UID(d.location.Node)}
		d.opts.events.Eventf(node, corev1.EventTypeWarning, "PoolObjectNotRecovered",
			"%s pool: %s could not be recovered; retried with backoff (toposnap_driver_unrecovered_objects): %v", pool, object, err)
	}
}

// Close stops background snapshot copies.
func (d *Driver) Close() {
	d.nodePool.Close()
	if d.zonePool != nil {
		d.zonePool.Close()
	}
}

// Run serves the driver until ctx is cancelled, then stops gracefully.
//
// The CSI socket is opened only once this node's topology is known (see
// resolveLocation): until then node-driver-registrar finds no socket and
// waits, so the kubelet never registers a topology the driver guessed.
// Meanwhile /healthz passes (waiting is not a fault) and /readyz fails,
// saying what the driver waits for.
func Run(ctx context.Context, opts Options) error {
	m := newMetrics()
	state := &startup{}
	if err := kube.ServeProbes(ctx, opts.MetricsAddress, m.registry, kube.Probes{Healthy: state.healthy, Ready: state.ready}); err != nil {
		return err
	}
	location, client, err := resolveLocation(ctx, opts, state.setWaiting)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting
		}
		return err
	}
	if client != nil {
		recorder, stop := kube.Recorder(client, "toposnap-driver", location.Node)
		defer stop()
		opts.events = recorder
	}
	d, err := newDriver(opts, location, m)
	if err != nil {
		return err
	}
	defer d.Close()
	zoneBackend := ""
	if d.zonePool != nil {
		zoneBackend = d.zonePool.BackendName()
	}
	klog.InfoS("Driver starting", "driver", Name, "node", location.Node, "zone", location.Zone,
		"region", location.Region, "endpoint", opts.Endpoint, "nodeBackend", d.nodePool.BackendName(),
		"zonePool", opts.ZoneDataDir != "", "zoneBackend", zoneBackend)

	listener, err := listenUnix(opts.Endpoint)
	if err != nil {
		return err
	}
	server := d.NewGRPCServer()
	state.setDriver(d)
	errs := make(chan error, 1)
	go func() { errs <- server.Serve(listener) }()
	select {
	case err := <-errs:
		return fmt.Errorf("serve %s: %w", opts.Endpoint, err)
	case <-ctx.Done():
	}
	klog.InfoS("Driver stopping")
	stopped := make(chan struct{})
	go func() { server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		server.Stop()
	}
	return nil
}

// NewGRPCServer returns a gRPC server with the three services registered.
func (d *Driver) NewGRPCServer() *grpc.Server {
	server := grpc.NewServer(grpc.UnaryInterceptor(d.intercept))
	csi.RegisterIdentityServer(server, d)
	csi.RegisterControllerServer(server, d)
	csi.RegisterNodeServer(server, d)
	return server
}

// listenUnix listens on a unix:// endpoint, replacing a stale socket file.
func listenUnix(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" {
		return nil, fmt.Errorf("endpoint %q: want unix:///path/to/csi.sock", endpoint)
	}
	path := u.Path
	if path == "" {
		path = u.Opaque
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	listener, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return listener, nil
}
