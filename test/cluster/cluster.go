package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// stopGrace is how long a component may take to exit after SIGTERM.
const stopGrace = 10 * time.Second

// Cluster is a running local control plane. Its processes run until Stop,
// or until the process that started them dies.
type Cluster struct {
	// Kubeconfig is the path of the admin (system:masters) kubeconfig.
	Kubeconfig string
	// Client and RestConfig talk to the API server as admin.
	Client     kubernetes.Interface
	RestConfig *rest.Config
	// BinDir holds the binaries the cluster runs, kubectl among them.
	BinDir string
	// Dir is the work directory; component logs are in Dir/logs.
	Dir string

	layout    layout
	removeDir bool
	// ports and caPEM let a fault (faults.go) wait for a restarted component.
	ports ports
	caPEM []byte
	// ca issues certificates for what joins the cluster (IssueClientCertificate).
	ca            *authority
	nodeLifecycle bool

	mu        sync.Mutex
	processes []*process // in start order
	stopOnce  sync.Once
}

// Start runs a cluster as opts says and returns once every node is Ready and
// schedulable, kube-system works and, with kwok, kwok manages the nodes.
// ctx bounds the start-up only; the cluster runs until Stop. On error,
// everything started is stopped and the error quotes the log of the
// component that failed, whose files are kept.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	begin := time.Now()
	opts, ownsDir, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cluster{BinDir: opts.BinDir, Dir: opts.Dir, layout: layout{opts.Dir}, removeDir: ownsDir, nodeLifecycle: opts.NodeLifecycleController}
	defer func() {
		if err != nil {
			c.removeDir = false // keep the logs the error points to
			c.Stop()
			err = fmt.Errorf("%w\n(cluster files kept in %s)", err, c.Dir)
		}
	}()
	if err := c.prepare(opts); err != nil {
		return nil, err
	}
	ports, err := pickPorts()
	if err != nil {
		return nil, err
	}
	creds, err := c.writeFiles(opts, ports)
	if err != nil {
		return nil, err
	}
	c.ports, c.caPEM, c.ca = ports, creds.ca.pair.CertPEM, creds.ca
	if err := c.startControlPlane(ctx, ports, creds); err != nil {
		return nil, err
	}
	if err := c.registerNodes(ctx, opts); err != nil {
		return nil, err
	}
	if err := c.waitUntilUsable(ctx, opts, ports, creds); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Cluster ready", "dir", c.Dir, "kubeconfig", c.Kubeconfig,
		"nodes", len(opts.Nodes), "elapsed", time.Since(begin).Round(time.Millisecond))
	return c, nil
}

// prepare checks the binaries and lays out the work directory.
func (c *Cluster) prepare(opts Options) error {
	if err := checkBinDir(c.BinDir); err != nil {
		return err
	}
	if !opts.WithoutKwok {
		if _, err := kwokStageFiles(c.BinDir); err != nil {
			return err
		}
	}
	return c.layout.prepare()
}

// writeFiles writes credentials, kubeconfigs and the scheduler config, and
// builds the admin client.
func (c *Cluster) writeFiles(opts Options, p ports) (*credentials, error) {
	creds, err := newCredentials(time.Now())
	if err != nil {
		return nil, err
	}
	if err := creds.write(c.layout); err != nil {
		return nil, err
	}
	if err := creds.writeKubeconfigs(c.layout, loopbackURL("https", p.apiserver)); err != nil {
		return nil, err
	}
	schedulerConfig, err := renderSchedulerConfig(opts.SchedulerConfig, c.layout.componentKubeconfig(componentScheduler))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.layout.schedulerConfig(), schedulerConfig, 0o644); err != nil {
		return nil, fmt.Errorf("write scheduler config: %w", err)
	}
	c.Kubeconfig = c.layout.adminKubeconfig()
	return creds, c.connect()
}

// connect builds the admin client from the kubeconfig, with limits high
// enough that tests creating many objects are not throttled client-side.
func (c *Cluster) connect() error {
	config, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", c.Kubeconfig, err)
	}
	config.QPS, config.Burst = 100, 200
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	c.RestConfig, c.Client = config, client
	return nil
}

// startControlPlane starts etcd and the API server, each once the previous
// one answers, then the controller manager and the scheduler.
func (c *Cluster) startControlPlane(ctx context.Context, p ports, creds *credentials) error {
	if err := c.start(ctx, componentEtcd, etcdArgs(c.layout, p), nil); err != nil {
		return err
	}
	if err := c.waitFor(ctx, etcdHealthy(p)); err != nil {
		return err
	}
	if err := c.start(ctx, componentAPIServer, apiserverArgs(c.layout, p), nil); err != nil {
		return err
	}
	if err := c.waitFor(ctx, apiserverReady(c.Client)); err != nil {
		return err
	}
	if err := bindKubeletClient(ctx, c.Client); err != nil {
		return err
	}
	if err := c.start(ctx, componentControllerManager, controllerManagerArgs(c.layout, p, c.nodeLifecycle), nil); err != nil {
		return err
	}
	return c.start(ctx, componentScheduler, schedulerArgs(c.layout, p), nil)
}

// registerNodes creates the nodes Ready, then starts kwok to keep them so.
func (c *Cluster) registerNodes(ctx context.Context, opts Options) error {
	for _, node := range opts.Nodes {
		if err := registerNode(ctx, c.Client, node); err != nil {
			return err
		}
	}
	if opts.WithoutKwok {
		return nil
	}
	stages, err := kwokStageFiles(c.BinDir)
	if err != nil {
		return err
	}
	return c.start(ctx, componentKwok, kwokArgs(c.layout, stages), kwokEnv(c.layout))
}

// waitUntilUsable waits for what a test relies on: the scheduler and the
// controller manager serving, the default service account (pods cannot be
// created before it exists), schedulable nodes and, with kwok, kwok holding
// every node's lease.
func (c *Cluster) waitUntilUsable(ctx context.Context, opts Options, p ports, creds *credentials) error {
	names := nodeNames(opts.Nodes)
	checks := []readiness{
		componentHealthy(componentScheduler, p.scheduler, "/readyz", creds.ca.pair.CertPEM),
		componentHealthy(componentControllerManager, p.controllerManager, "/healthz", creds.ca.pair.CertPEM),
		defaultServiceAccount(c.Client),
		nodesUsable(c.Client, names),
	}
	if !opts.WithoutKwok {
		checks = append(checks, kwokHoldsLeases(c.Client, names))
	}
	for _, check := range checks {
		if err := c.waitFor(ctx, check); err != nil {
			return err
		}
	}
	return nil
}

// start runs the named component's binary from BinDir.
func (c *Cluster) start(ctx context.Context, name string, args, env []string) error {
	p, err := startProcess(name, filepath.Join(c.BinDir, name), args, c.Dir, c.layout.logs(), env)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.processes = append(c.processes, p)
	c.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("Started component", "component", name, "pid", p.cmd.Process.Pid, "log", p.logPath)
	return nil
}

// Stop terminates the cluster's processes, newest first, each with SIGTERM
// and then SIGKILL after a grace period, and removes the work directory if
// Start created it. It only signals processes this cluster started, and is
// safe to call more than once.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		processes := c.processes
		c.mu.Unlock()
		for i := len(processes) - 1; i >= 0; i-- {
			processes[i].stop(stopGrace)
		}
		if c.removeDir {
			_ = os.RemoveAll(c.Dir)
		}
	})
}

// Kubectl runs the cluster's kubectl as admin and returns its stdout; on
// failure the error carries its stderr.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, binKubectl), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// process returns the started component with the given name, or nil.
func (c *Cluster) process(name string) *process {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.processes {
		if p.name == name {
			return p
		}
	}
	return nil
}

// exitedProcess returns a component that has stopped, or nil.
func (c *Cluster) exitedProcess() *process {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.processes {
		if p.exited() {
			return p
		}
	}
	return nil
}
