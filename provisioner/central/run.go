package central

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"github.com/prometheus/client_golang/prometheus"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/provisioner"
	"github.com/toposnap/toposnap/snapshotter"
)

// Options configure toposnap-controller.
type Options struct {
	Kubeconfig     string
	DriverName     string
	Workers        int
	Resync         time.Duration
	QPS            float32
	Burst          int
	MetricsAddress string
	// Namespace holds the leader Lease and CSIStorageCapacity objects.
	Namespace string
	// LeaseName is the leader-election Lease; Identity this replica's name.
	LeaseName, Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are leader election's.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// CapacityInterval is how often stale CSIStorageCapacity is removed.
	CapacityInterval time.Duration
	// SnapshotBinder: bind VolumeSnapshots to contents (toposnap is the
	// cluster's snapshot controller); never beside the upstream one.
	SnapshotBinder bool
	// LeaseCandidates is how many of a zone's nodes may campaign for each
	// of its Leases (candidates.go); 0 lets every node campaign.
	LeaseCandidates int
}

// Run campaigns for leadership and, while leading, routes objects and
// releases source protection. It returns when ctx ends (releasing the
// Lease) or when leadership is lost (the process should exit, so a replica
// never acts on caches filled while another led).
func Run(ctx context.Context, opts Options) error {
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	config.QPS, config.Burst = opts.QPS, opts.Burst
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create API client: %w", err)
	}
	snapshots, err := snapshotclient.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create snapshot API client: %w", err)
	}
	metadataClient, err := metadata.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create metadata API client: %w", err)
	}
	registry := prometheus.NewRegistry()
	leading := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "toposnap_controller_leader",
		Help: "1 while this replica leads (routes objects and releases source protection).",
	})
	registry.MustRegister(leading)
	var synced atomic.Bool
	ready := func(context.Context) error {
		if synced.Load() {
			return nil
		}
		return errors.New("not leading, or the caches are not filled yet")
	}
	// A standby replica is live (healthz) but not ready: only the leader serves.
	if err := kube.ServeProbes(ctx, opts.MetricsAddress, registry, kube.Probes{Ready: ready}); err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: opts.Namespace, Name: opts.LeaseName},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: opts.Identity},
	}
	lost := errors.New("lost leadership")
	var (
		mu     sync.Mutex
		runErr error
	)
	setErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if runErr == nil {
			runErr = err
		}
	}
	leaderCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	leaderelection.RunOrDie(leaderCtx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   opts.LeaseDuration,
		RenewDeadline:   opts.RenewDeadline,
		RetryPeriod:     opts.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            opts.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("Leading", "lease", klog.KRef(opts.Namespace, opts.LeaseName), "identity", opts.Identity)
				leading.Set(1)
				if err := lead(ctx, opts, client, snapshots, metadataClient, registry, &synced); err != nil && ctx.Err() == nil {
					setErr(err)
				}
				cancel()
			},
			OnStoppedLeading: func() {
				leading.Set(0)
				synced.Store(false)
				if ctx.Err() == nil {
					setErr(lost)
				}
			},
		},
	})
	if ctx.Err() != nil {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	if runErr == nil {
		return lost // RunOrDie returned: leadership ended
	}
	return runErr
}

// lead runs the central controllers until ctx ends.
func lead(ctx context.Context, opts Options, client kubernetes.Interface, snapshots snapshotclient.Interface,
	metadataClient metadata.Interface, registry *prometheus.Registry, synced *atomic.Bool) error {
	snapshotAPI := kube.NewSnapshotAPIWatch(client.Discovery())
	go snapshotAPI.Run(ctx)
	kubeInformers := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync, informers.WithTransform(kube.StripManagedFields))
	snapInformers := snapshotinformers.NewSharedInformerFactoryWithOptions(kube.GatedSnapshots(snapshots, snapshotAPI),
		opts.Resync, snapshotinformers.WithTransform(kube.StripManagedFields))
	// Nodes: names and labels only, so 5,000 of them cost little.
	nodeInformers := metadatainformer.NewFilteredSharedInformerFactory(metadataClient, opts.Resync, metav1.NamespaceAll, nil)
	nodeInformer := nodeInformers.ForResource(schema.GroupVersionResource{Version: "v1", Resource: "nodes"}).Informer()
	if err := nodeInformer.SetTransform(kube.StripManagedFields); err != nil {
		return err
	}
	var csiNodes cache.SharedIndexInformer
	if opts.LeaseCandidates > 0 {
		csiNodes = kubeInformers.Storage().V1().CSINodes().Informer()
	}
	recorder, stopEvents := kube.Recorder(client, "toposnap-controller", "")
	defer stopEvents()
	r, err := newRouter(opts.DriverName, client, snapshots, kubeInformers, snapInformers, nodeInformer, recorder, registry)
	if err != nil {
		return err
	}
	sources := provisioner.NewController(provisioner.Config{
		DriverName: opts.DriverName, Client: client, Snapshots: snapshots, Recorder: recorder,
		CapacityNamespace: opts.Namespace, Registry: registry, SourcesOnly: true,
	}, kube.SameInformers(kubeInformers, snapInformers))
	var binder *snapshotter.Controller
	if opts.SnapshotBinder {
		binder = snapshotter.NewController(snapshotter.Config{
			DriverName: opts.DriverName, Binder: true, CommonController: true, Snapshots: snapshots, Client: client,
			Recorder: recorder, Registry: registry,
		}, kube.SameInformers(kubeInformers, snapInformers))
	}
	kubeInformers.Start(ctx.Done())
	snapInformers.Start(ctx.Done())
	nodeInformers.Start(ctx.Done())
	defer kubeInformers.Shutdown()
	defer snapInformers.Shutdown()
	defer nodeInformers.Shutdown()
	defer r.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), r.synced...) {
		return ctx.Err()
	}
	if csiNodes != nil {
		if !cache.WaitForCacheSync(ctx.Done(), csiNodes.HasSynced, nodeInformer.HasSynced) {
			return ctx.Err()
		}
		keeper := newCandidateKeeper(client, opts.Namespace, opts.LeaseCandidates)
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			keeper.sync(ctx, eligibleByZone(opts.DriverName, nodesOf(nodeInformer.GetStore()), csiNodesOf(csiNodes.GetStore())))
		}, syncEvery)
	}
	synced.Store(true)
	klog.InfoS("Caches filled; routing", "driver", opts.DriverName)
	for range opts.Workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, r.queue, r.sync) }, time.Second)
	}
	if binder != nil {
		go func() {
			if err := binder.Run(ctx, opts.Workers); err != nil {
				klog.ErrorS(err, "Snapshot binder stopped")
			}
		}()
	}
	return sources.Run(ctx, opts.Workers, provisioner.Background{CapacityInterval: opts.CapacityInterval})
}

// nodesOf lists the Nodes' names and labels from the metadata informer's
// store.
func nodesOf(store cache.Store) []nodeLabels {
	var out []nodeLabels
	for _, obj := range store.List() {
		if m, ok := obj.(metav1.Object); ok {
			out = append(out, nodeLabels{name: m.GetName(), labels: m.GetLabels()})
		}
	}
	return out
}

// csiNodesOf lists the CSINodes of the informer's store.
func csiNodesOf(store cache.Store) []*storagev1.CSINode {
	var out []*storagev1.CSINode
	for _, obj := range store.List() {
		if cn, ok := obj.(*storagev1.CSINode); ok {
			out = append(out, cn)
		}
	}
	return out
}
