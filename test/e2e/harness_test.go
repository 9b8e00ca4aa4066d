// Package e2e runs toposnap's processes (driver, provisioner, snapshotter on
// each worker node) against the local control plane with the real
// kube-scheduler and kube-controller-manager, and plays the kubelet's volume
// part on the drivers' sockets where data matters.
package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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

var env *environment

// environment is the cluster plus toposnap's processes on node1 and node2.
type environment struct {
	cluster *cluster.Cluster
	snaps   snapshotclient.Interface
	dir     string
	bin     string
	nodes   map[string]*nodeProcesses
}

// nodeProcesses are one worker's driver, provisioner and snapshotter.
type nodeProcesses struct {
	name     string
	socket   string
	node     csi.NodeClient
	ctrl     csi.ControllerClient
	commands map[string]*exec.Cmd
	args     map[string][]string
}

func TestMain(m *testing.M) {
	extenderPort, err := freePort()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	// The real kube-scheduler asks toposnap's extender, as an operator
	// registers it (see docs/operations.md).
	opts := cluster.Options{SchedulerConfig: cluster.DefaultSchedulerConfig(fmt.Sprintf(`- urlPrefix: http://127.0.0.1:%d
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 5
  nodeCacheCapable: true
  httpTimeout: 5s`, extenderPort))}
	os.Exit(cluster.TestMainWithCluster(m, opts, func(c *cluster.Cluster) {
		if c == nil {
			return
		}
		var err error
		env, err = setUp(c, extenderPort)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e set-up: %v\n", err)
			c.Stop()
			os.Exit(1)
		}
	}))
}

func setUp(c *cluster.Cluster, extenderPort int) (*environment, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "toposnap-e2e-")
	if err != nil {
		return nil, err
	}
	e := &environment{cluster: c, dir: dir, bin: filepath.Join(dir, "bin"), nodes: map[string]*nodeProcesses{}}
	build := exec.Command("go", "build", "-o", e.bin+"/", "./driver/cmd/toposnap-driver", "./provisioner/cmd/toposnap-provisioner",
		"./snapshotter/cmd/toposnap-snapshotter", "./extender/cmd/toposnap-extender")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build components: %w\n%s", err, out)
	}
	if e.snaps, err = snapshotclient.NewForConfig(c.RestConfig); err != nil {
		return nil, err
	}
	if err := e.installSnapshotCRDs(ctx, root); err != nil {
		return nil, err
	}
	if _, err := c.Client.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: "csi.toposnap.io"},
		Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false), PodInfoOnMount: ptr.To(false),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create CSIDriver: %w", err)
	}
	if err := e.startExtender(ctx, extenderPort); err != nil {
		return nil, err
	}
	zonePool := filepath.Join(dir, "zone-cn-hangzhou-b")
	for _, node := range []string{"node1", "node2"} {
		// The kubelet labels a node with the driver's node key on plugin
		// registration; no kubelet runs here, so do it for it.
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, topology.NodeKey, node)
		if _, err := c.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return nil, fmt.Errorf("label %s: %w", node, err)
		}
		p, err := e.startNode(ctx, node, zonePool)
		if err != nil {
			return nil, err
		}
		e.nodes[node] = p
	}
	return e, nil
}

// startExtender runs the extender (after the snapshot CRDs exist, so it
// watches snapshots) and waits until it answers.
func (e *environment) startExtender(ctx context.Context, port int) error {
	p := &nodeProcesses{name: "control-plane", commands: map[string]*exec.Cmd{}, args: map[string][]string{}}
	address := fmt.Sprintf("127.0.0.1:%d", port)
	if err := p.start(e, "extender", "toposnap-extender", "--kubeconfig", e.cluster.Kubeconfig, "--listen", address, "--v", "2"); err != nil {
		return err
	}
	err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		resp, err := http.Get("http://" + address + "/healthz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("extender did not come up (see %s): %w", e.logPath("control-plane", "extender"), err)
	}
	return nil
}

func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

func (e *environment) installSnapshotCRDs(ctx context.Context, root string) error {
	list := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		return fmt.Errorf("find snapshot client module: %w", err)
	}
	crds := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	for _, kind := range []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"} {
		file := filepath.Join(crds, "snapshot.storage.k8s.io_"+kind+".yaml")
		if out, err := e.cluster.Kubectl(ctx, "apply", "-f", file); err != nil {
			return fmt.Errorf("install CRD %s: %w\n%s", kind, err, out)
		}
	}
	if out, err := e.cluster.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/volumesnapshots.snapshot.storage.k8s.io", "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
		"crd/volumesnapshotclasses.snapshot.storage.k8s.io"); err != nil {
		return fmt.Errorf("wait for snapshot CRDs: %w\n%s", err, out)
	}
	return nil
}

// startNode runs the node's three processes, as the chart's DaemonSet pod would.
func (e *environment) startNode(ctx context.Context, node, zonePool string) (*nodeProcesses, error) {
	nodeDir := filepath.Join(e.dir, node)
	socket := filepath.Join(nodeDir, "csi.sock")
	p := &nodeProcesses{name: node, socket: socket, commands: map[string]*exec.Cmd{}, args: map[string][]string{}}
	if err := p.start(e, "driver", "toposnap-driver", "--endpoint", "unix://"+socket, "--node-id", node,
		"--data-dir", filepath.Join(nodeDir, "pool"), "--zone-data-dir", zonePool, "--capacity", "10Gi",
		"--kubeconfig", e.cluster.Kubeconfig, "--v", "2"); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	p.node, p.ctrl = csi.NewNodeClient(conn), csi.NewControllerClient(conn)
	if err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		return err == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("driver on %s did not come up (see %s): %w", node, e.logPath(node, "driver"), err)
	}
	common := []string{"--csi-address", socket, "--node-name", node, "--kubeconfig", e.cluster.Kubeconfig, "--v", "2"}
	provisionerArgs := append(append([]string{}, common...), "--capacity-namespace", "default", "--capacity-interval", "2s",
		"--orphan-interval", "5s", "--orphan-grace", "30s")
	if err := p.start(e, "provisioner", "toposnap-provisioner", provisionerArgs...); err != nil {
		return nil, err
	}
	if err := p.start(e, "snapshotter", "toposnap-snapshotter", append(common, "--common-controller")...); err != nil {
		return nil, err
	}
	return p, nil
}

func (e *environment) logPath(node, component string) string {
	return filepath.Join(e.dir, node, component+".log")
}

func (p *nodeProcesses) start(e *environment, component, binary string, args ...string) error {
	if err := os.MkdirAll(filepath.Join(e.dir, p.name), 0o750); err != nil {
		return err
	}
	logFile, err := os.OpenFile(e.logPath(p.name, component), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	p.args[component] = append([]string{binary}, args...)
	cmd := exec.Command(filepath.Join(e.bin, binary), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = deathSignal()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s on %s: %w", component, p.name, err)
	}
	p.commands[component] = cmd
	return nil
}

// kill SIGKILLs a component, as a crash would, and reaps it.
func (p *nodeProcesses) kill(component string) {
	cmd := p.commands[component]
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// restart starts a killed component again with the same flags.
func (p *nodeProcesses) restart(e *environment, component string) error {
	args := p.args[component]
	return p.start(e, component, args[0], args[1:]...)
}

// poll waits with a deadline; see cluster.Poll.
var poll = cluster.Poll

func needEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip("needs the local control plane (not started with -short)")
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
