// Package harness runs toposnap as the chart would, but as local processes
// on the local control plane (test/cluster): on each worker node a driver,
// a provisioner and a snapshotter sharing the zone pool; the extender
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
)

// Workers are the seed's worker nodes, each running toposnap's node processes.
var Workers = []string{"node1", "node2"}

// Env is a running toposnap on a running cluster.
type Env struct {
	Cluster *cluster.Cluster
	Snaps   snapshotclient.Interface
	// Dir holds binaries, pools, sockets and every process's log.
	Dir   string
	Nodes map[string]*Node
	bin   string
	extra []*Node // control-plane processes (extender, webhook)
}

// Node is one worker's processes and its driver's CSI clients.
type Node struct {
	Name       string
	Socket     string
	NodeClient csi.NodeClient
	Controller csi.ControllerClient
	env        *Env
	commands   map[string]*exec.Cmd
	args       map[string][]string
	metrics    map[string]string // component -> its --metrics-address
}

// SchedulerConfig is the KubeSchedulerConfiguration registering the
// extender at port, as an operator registers it.
func SchedulerConfig(extenderPort int) string {
	return cluster.DefaultSchedulerConfig(fmt.Sprintf(`- urlPrefix: http://127.0.0.1:%d
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 5
  nodeCacheCapable: true
  httpTimeout: 5s`, extenderPort))
}

// Options for Start.
type Options struct {
	// ExtenderPort is where the scheduler was told the extender listens.
	ExtenderPort int
	// Webhook also runs the admission webhook and registers it.
	Webhook bool
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
	e := &Env{Cluster: c, Dir: dir, bin: filepath.Join(dir, "bin"), Nodes: map[string]*Node{}}
	build := exec.Command("go", "build", "-o", e.bin+"/", "./driver/cmd/toposnap-driver", "./provisioner/cmd/toposnap-provisioner",
		"./snapshotter/cmd/toposnap-snapshotter", "./extender/cmd/toposnap-extender", "./webhook/cmd/toposnap-webhook")
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
	if err := e.startExtender(ctx, opts.ExtenderPort); err != nil {
		return nil, err
	}
	if opts.Webhook {
		if err := e.startWebhook(ctx); err != nil {
			return nil, err
		}
	}
	zonePool := filepath.Join(dir, "zone-cn-hangzhou-b")
	for _, name := range Workers {
		// The kubelet labels a node with the driver's node key on plugin
		// registration; no kubelet runs here, so do it for it.
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, topology.NodeKey, name)
		if _, err := c.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return nil, fmt.Errorf("label %s: %w", name, err)
		}
		node, err := e.startNode(ctx, name, zonePool)
		if err != nil {
			return nil, err
		}
		e.Nodes[name] = node
	}
	return e, nil
}

// Stop kills every process Start ran.
func (e *Env) Stop() {
	for _, n := range append(e.nodeList(), e.extra...) {
		for component := range n.commands {
			n.Kill(component)
		}
	}
}

func (e *Env) nodeList() []*Node {
	out := make([]*Node, 0, len(e.Nodes))
	for _, name := range Workers {
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
	n := &Node{Name: "control-plane", env: e, commands: map[string]*exec.Cmd{}, args: map[string][]string{}}
	e.extra = append(e.extra, n)
	return n
}

// startNode runs the node's three processes, as the chart's DaemonSet pod would.
func (e *Env) startNode(ctx context.Context, name, zonePool string) (*Node, error) {
	nodeDir := filepath.Join(e.Dir, name)
	socket := filepath.Join(nodeDir, "csi.sock")
	n := &Node{Name: name, Socket: socket, env: e, commands: map[string]*exec.Cmd{}, args: map[string][]string{}, metrics: map[string]string{}}
	for _, component := range []string{"driver", "provisioner", "snapshotter"} {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		n.metrics[component] = fmt.Sprintf("127.0.0.1:%d", port)
	}
	if err := n.start("driver", "toposnap-driver", "--endpoint", "unix://"+socket, "--node-id", name,
		"--data-dir", filepath.Join(nodeDir, "pool"), "--zone-data-dir", zonePool, "--capacity", "10Gi",
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
	common := []string{"--csi-address", socket, "--node-name", name, "--kubeconfig", e.Cluster.Kubeconfig, "--v", "2"}
	provisionerArgs := append(append([]string{}, common...), "--capacity-namespace", "default", "--capacity-interval", "2s",
		"--orphan-interval", "5s", "--orphan-grace", "30s")
	if err := n.start("provisioner", "toposnap-provisioner", append(provisionerArgs, "--metrics-address", n.metrics["provisioner"])...); err != nil {
		return nil, err
	}
	if err := n.start("snapshotter", "toposnap-snapshotter", append(common, "--common-controller", "--metrics-address", n.metrics["snapshotter"])...); err != nil {
		return nil, err
	}
	return n, nil
}

// LogPath is where a component of a node logs.
func (e *Env) LogPath(node, component string) string {
	return filepath.Join(e.Dir, node, component+".log")
}

func (n *Node) start(component, binary string, args ...string) error {
	if err := os.MkdirAll(filepath.Join(n.env.Dir, n.Name), 0o750); err != nil {
		return err
	}
	logFile, err := os.OpenFile(n.env.LogPath(n.Name, component), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	n.args[component] = append([]string{binary}, args...)
	cmd := exec.Command(filepath.Join(n.env.bin, binary), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s on %s: %w", component, n.Name, err)
	}
	n.commands[component] = cmd
	return nil
}

// Kill SIGKILLs a component, as a crash would, and reaps it.
func (n *Node) Kill(component string) {
	cmd, ok := n.commands[component]
	if !ok {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// Restart starts a killed component again with the same flags.
func (n *Node) Restart(component string) error {
	args := n.args[component]
	return n.start(component, args[0], args[1:]...)
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
