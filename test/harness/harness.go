// Package harness runs toposnap as the chart would, but as local processes
// on the local control plane (test/cluster): on each worker node a driver,
// a provisioner and a snapshotter, the nodes of a zone sharing that zone's
// pool; the extender
// registered in kube-scheduler; optionally the webhook registered with the
// API server over TLS. The e2e tests and `make demo` both stand on it.
package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/testpool"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/webhook"
)

// Workers are the seed's worker nodes, each running toposnap's node
// processes: what Start runs when Options.Workers is empty.
var Workers = []string{"node1", "node2"}

// Env is a running toposnap on a running cluster.
type Env struct {
	Cluster *cluster.Cluster
	Snaps   snapshotclient.Interface
	// Dir holds binaries, pools, sockets and every process's log.
	Dir   string
	Nodes map[string]*Node
	// Data records what tests wrote through WriteData and which snapshots
	// were cut of it, for the data invariant (invariants.go).
	Data    *Ledger
	bin     string
	workers []string // names of Nodes, in start order
	extra   []*Node  // control-plane processes (extender, webhook)

	exitsMu sync.Mutex
	exits   []Exit // components that exited on their own (process.go)

	btrfsNodePools bool
	filesystems    []*testpool.Btrfs // node pools' filesystems, closed by Stop
}

// Node is one worker's processes and its driver's CSI clients.
type Node struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone label: the nodes of one
	// zone share its zone pool.
	Zone       string
	Socket     string
	NodeClient csi.NodeClient
	Controller csi.ControllerClient
	env        *Env
	mu         sync.Mutex          // guards procs, args
	procs      map[string]*process // running (or crashed, awaiting restart) components
	args       map[string][]string // component -> binary and flags, to start it again
	metrics    map[string]string   // component -> its --metrics-address
}

// SchedulerConfig is the KubeSchedulerConfiguration registering the
// extender at port, as an operator registers it.
func SchedulerConfig(extenderPort int) string {
	return cluster.DefaultSchedulerConfig(ExtenderEntry(extenderPort, false))
}

// ManagedSchedulerConfig is SchedulerConfig with the extender asked only
// about pods carrying webhook.VolumeResource (managedResources,
// ignoredByScheduler), as the chart configures it: run the harness with
// Options.MarkPods so the webhook gives pods that resource.
func ManagedSchedulerConfig(extenderPort int) string {
	return cluster.DefaultSchedulerConfig(ExtenderEntry(extenderPort, true))
}

// ExtenderEntry is the scheduler config's extenders entry for the
// extender at port (managed: only for pods carrying webhook.VolumeResource).
func ExtenderEntry(extenderPort int, managed bool) string {
	entry := fmt.Sprintf(`- urlPrefix: http://127.0.0.1:%d
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 5
  nodeCacheCapable: true
  httpTimeout: 5s`, extenderPort)
	if managed {
		entry += fmt.Sprintf(`
  managedResources:
  - name: %s
    ignoredByScheduler: true`, webhook.VolumeResource)
	}
	return entry
}

// Options for Start.
type Options struct {
	// ExtenderPort is where the scheduler was told the extender listens.
	ExtenderPort int
	// Webhook also runs the admission webhook and registers it.
	Webhook bool
	// MarkPods has the webhook give pods using toposnap volumes
	// webhook.VolumeResource for the default scheduler (start the cluster
	// with ManagedSchedulerConfig). It implies Webhook.
	MarkPods bool
	// Workers names the cluster's nodes that run toposnap's node processes;
	// empty means Workers (the seed's node1 and node2). Each node's zone
	// label decides which zone pool its driver shares.
	Workers []string
	// BtrfsNodePools puts each node's pool on a loop-backed btrfs
	// filesystem of its own (enforced sizes, constant-time snapshots), as
	// a production node would have; otherwise a directory of the host's.
	BtrfsNodePools bool
}

// Start builds the binaries and runs toposnap's processes on c.
func Start(ctx context.Context, c *cluster.Cluster, opts Options) (*Env, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "toposnap-env-")
	if err != nil {
		return nil, err
	}
	e := &Env{Cluster: c, Dir: dir, bin: filepath.Join(dir, "bin"), Nodes: map[string]*Node{}, Data: NewLedger()}
	e.workers = opts.Workers
	e.btrfsNodePools = opts.BtrfsNodePools
	if len(e.workers) == 0 {
		e.workers = Workers
	}
	build := exec.Command("go", "build", "-o", e.bin+"/", "./driver/cmd/toposnap-driver", "./provisioner/cmd/toposnap-provisioner",
		"./provisioner/cmd/toposnap-controller", "./snapshotter/cmd/toposnap-snapshotter", "./extender/cmd/toposnap-extender", "./webhook/cmd/toposnap-webhook")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build components: %w\n%s", err, out)
	}
	if e.Snaps, err = snapshotclient.NewForConfig(c.RestConfig); err != nil {
		return nil, err
	}
	if err := InstallSnapshotCRDs(ctx, c, root); err != nil {
		return nil, err
	}
	if _, err := c.Client.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: "csi.toposnap.io"},
		Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false), PodInfoOnMount: ptr.To(false),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create CSIDriver: %w", err)
	}
	if err := e.startController(ctx); err != nil {
		return nil, err
	}
	if err := e.startExtender(ctx, opts.ExtenderPort); err != nil {
		return nil, err
	}
	if opts.Webhook || opts.MarkPods {
		if err := e.startWebhook(ctx, opts.MarkPods); err != nil {
			return nil, err
		}
	}
	for _, name := range e.workers {
		// The kubelet labels a node with the driver's node key on plugin
		// registration; no kubelet runs here, so do it for it.
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, topology.NodeKey, name)
		labelled, err := c.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			return nil, fmt.Errorf("label %s: %w", name, err)
		}
		zone := labelled.Labels[topology.ZoneKey]
		if zone == "" {
			return nil, fmt.Errorf("worker %s has no %s label: its zone pool would be shared with no one", name, topology.ZoneKey)
		}
		node, err := e.startNode(ctx, name, zone, filepath.Join(dir, "zone-"+zone))
		if err != nil {
			return nil, err
		}
		e.Nodes[name] = node
	}
	return e, nil
}

// Workers names the nodes running toposnap's node processes, in start order.
func (e *Env) Workers() []string { return slices.Clone(e.workers) }

// Zones maps each zone of the workers to its workers' names, in start order.
func (e *Env) Zones() map[string][]string {
	zones := map[string][]string{}
	for _, name := range e.workers {
		zone := e.Nodes[name].Zone
		zones[zone] = append(zones[zone], name)
	}
	return zones
}

// Stop kills every process Start ran.
func (e *Env) Stop() {
	for _, n := range e.AllNodes() {
		for _, component := range n.Components() {
			n.Kill(component)
		}
	}
	for _, fs := range e.filesystems {
		if err := fs.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		}
	}
	e.filesystems = nil
}

// nodePool makes the directory a node's pool lives in, and says which
// backend serves it.
func (e *Env) nodePool(nodeDir string) (string, string, error) {
	if !e.btrfsNodePools {
		return filepath.Join(nodeDir, "pool"), "auto", nil
	}
	workDir := filepath.Join(nodeDir, "btrfs")
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return "", "", err
	}
	fs, err := testpool.NewBtrfs(workDir, 4<<30)
	if err != nil {
		return "", "", fmt.Errorf("btrfs pool: %w", err)
	}
	e.filesystems = append(e.filesystems, fs)
	return filepath.Join(fs.Dir, "pool"), "btrfs", nil
}

// AllNodes returns the workers, in start order, and then the pseudo-node
// holding the control-plane processes (extender, webhook), if any: every
// toposnap process of the Env is a component of one of them.
func (e *Env) AllNodes() []*Node {
	return append(e.nodeList(), e.extra...)
}

func (e *Env) nodeList() []*Node {
	out := make([]*Node, 0, len(e.Nodes))
	for _, name := range e.workers {
		if n, ok := e.Nodes[name]; ok {
			out = append(out, n)
		}
	}
	return out
}

// InstallSnapshotCRDs applies the upstream snapshot CRDs from the module
// cache and waits until they are served.
func InstallSnapshotCRDs(ctx context.Context, c *cluster.Cluster, root string) error {
	list := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		return fmt.Errorf("find snapshot client module: %w", err)
	}
	crds := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	for _, kind := range []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"} {
		file := filepath.Join(crds, "snapshot.storage.k8s.io_"+kind+".yaml")
		if out, err := c.Kubectl(ctx, "apply", "-f", file); err != nil {
			return fmt.Errorf("install CRD %s: %w\n%s", kind, err, out)
		}
	}
	if out, err := c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/volumesnapshots.snapshot.storage.k8s.io", "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
		"crd/volumesnapshotclasses.snapshot.storage.k8s.io"); err != nil {
		return fmt.Errorf("wait for snapshot CRDs: %w\n%s", err, out)
	}
	return nil
}

// startController runs toposnap-controller twice, as the chart's
// Deployment of two replicas would ("controller" and "controller-standby",
// each its own identity in the Lease), and waits until one leads with its
// caches filled (/readyz): the node agents watch only what it routed to
// them. Killing the leader moves leadership to the other within a few
// seconds (short Lease timings, for tests).
func (e *Env) startController(ctx context.Context) error {
	p := e.controlPlaneNode()
	for _, component := range controllerReplicas {
		port, err := FreePort()
		if err != nil {
			return err
		}
		p.metrics[component] = fmt.Sprintf("127.0.0.1:%d", port)
		if err := p.start(component, "toposnap-controller", "--kubeconfig", e.Cluster.Kubeconfig, "--namespace", "default",
			"--leader-election-identity", "harness-"+component, "--leader-election-lease-duration", "4s",
			"--leader-election-renew-deadline", "3s", "--leader-election-retry-period", "500ms",
			"--capacity-interval", "2s", "--snapshot-binder", "--metrics-address", p.metrics[component], "--v", "2"); err != nil {
			return err
		}
	}
	return e.awaitController(ctx)
}

// controllerReplicas are the components toposnap-controller runs as.
var controllerReplicas = []string{"controller", "controller-standby"}

// StopController kills both toposnap-controller replicas: the interop tests
// run the upstream provisioner and snapshot-controller, beside which
// toposnap's binder and source-protection release must not run.
func (e *Env) StopController() {
	p := e.controlPlaneNode()
	for _, component := range controllerReplicas {
		p.Kill(component)
	}
}

// StartController starts the replicas StopController stopped again and
// waits until one leads with its caches filled.
func (e *Env) StartController(ctx context.Context) error {
	p := e.controlPlaneNode()
	for _, component := range controllerReplicas {
		if err := p.Restart(component); err != nil {
			return err
		}
	}
	return e.awaitController(ctx)
}

// awaitController waits until a replica answers /readyz (leading, caches
// filled).
func (e *Env) awaitController(ctx context.Context) error {
	p := e.controlPlaneNode()
	err := cluster.Poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		for _, component := range controllerReplicas {
			resp, err := http.Get("http://" + p.metrics[component] + "/readyz")
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("toposnap-controller did not come up (see %s): %w", e.LogPath("control-plane", "controller"), err)
	}
	return nil
}

// startExtender runs the extender (after the snapshot CRDs exist, so it
// watches snapshots) and waits until it answers.
func (e *Env) startExtender(ctx context.Context, port int) error {
	p := e.controlPlaneNode()
	address := fmt.Sprintf("127.0.0.1:%d", port)
	if err := p.start("extender", "toposnap-extender", "--kubeconfig", e.Cluster.Kubeconfig, "--listen", address, "--v", "2"); err != nil {
		return err
	}
	err := cluster.Poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		resp, err := http.Get("http://" + address + "/healthz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("extender did not come up (see %s): %w", e.LogPath("control-plane", "extender"), err)
	}
	return nil
}

func (e *Env) controlPlaneNode() *Node {
	for _, n := range e.extra {
		return n
	}
	n := &Node{Name: "control-plane", env: e, procs: map[string]*process{}, args: map[string][]string{}, metrics: map[string]string{}}
	e.extra = append(e.extra, n)
	return n
}

// startNode runs the node's three processes, as the chart's DaemonSet pod would.
func (e *Env) startNode(ctx context.Context, name, zone, zonePool string) (*Node, error) {
	nodeDir := filepath.Join(e.Dir, name)
	socket := filepath.Join(nodeDir, "csi.sock")
	n := &Node{Name: name, Zone: zone, Socket: socket, env: e, procs: map[string]*process{},
		args: map[string][]string{}, metrics: map[string]string{}}
	for _, component := range []string{"driver", "provisioner", "snapshotter"} {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		n.metrics[component] = fmt.Sprintf("127.0.0.1:%d", port)
	}
	pool, backend, err := e.nodePool(nodeDir)
	if err != nil {
		return nil, err
	}
	if err := n.start("driver", "toposnap-driver", "--endpoint", "unix://"+socket, "--node-id", name,
		"--data-dir", pool, "--backend", backend, "--zone-data-dir", zonePool, "--capacity", "10Gi",
		"--kubeconfig", e.Cluster.Kubeconfig, "--v", "2", "--metrics-address", n.metrics["driver"]); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	n.NodeClient, n.Controller = csi.NewNodeClient(conn), csi.NewControllerClient(conn)
	if err := cluster.Poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		return err == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("driver on %s did not come up (see %s): %w", name, e.LogPath(name, "driver"), err)
	}
	common := []string{"--csi-address", socket, "--node-name", name, "--kubeconfig", e.Cluster.Kubeconfig, "--v", "2", "--routed"}
	provisionerArgs := append(append([]string{}, common...), "--capacity-namespace", "default", "--capacity-interval", "2s",
		"--orphan-interval", "5s", "--orphan-grace", "30s")
	if err := n.start("provisioner", "toposnap-provisioner", append(provisionerArgs, "--metrics-address", n.metrics["provisioner"])...); err != nil {
		return nil, err
	}
	if err := n.start("snapshotter", "toposnap-snapshotter", append(common, "--common-controller", "--lease-namespace", "default", "--metrics-address", n.metrics["snapshotter"])...); err != nil {
		return nil, err
	}
	return n, nil
}

// LogPath is where a component of a node logs.
func (e *Env) LogPath(node, component string) string {
	return filepath.Join(e.Dir, node, component+".log")
}

// Metric sums the samples a component of the node serves on /metrics whose
// name and labels start with series, e.g.
// `toposnap_snapshotter_create_snapshot_total{code="OK"}`.
func (n *Node) Metric(ctx context.Context, component, series string) (float64, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.metrics[component]+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return 0, fmt.Errorf("scrape %s on %s: %w", component, n.Name, err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, series) {
			continue
		}
		fields := strings.Fields(line)
		value, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += value
	}
	return sum, nil
}

// FreePort picks a free loopback port.
func FreePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}
