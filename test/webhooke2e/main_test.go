// Package webhooke2e runs toposnap-webhook against a local control plane of
// its own: the API server calls it through real Mutating- and
// ValidatingWebhookConfigurations (matchConditions, namespace opt-out,
// failurePolicy Fail), and the tests assert what users see: stored
// objects, rejections with their messages, and warnings.
package webhooke2e

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"

	"github.com/toposnap/toposnap/test/cluster"

	"github.com/toposnap/toposnap/test/harness"
)

// env is the cluster and the webhook the tests run against; nil with -short.
var env *environment

// environment is the cluster plus a running toposnap-webhook.
type environment struct {
	cluster   *cluster.Cluster
	snapshots snapshotclient.Interface
	dir       string // webhook binary, certificates and log
	address   string // host:port the webhook serves on
	pki       *harness.PKI
	webhook   *exec.Cmd
	exited    chan struct{} // closed when the webhook process has exited
	exitErr   error         // why it exited, once exited is closed
}

func TestMain(m *testing.M) {
	flag.Parse()
	// Build the webhook while the cluster starts.
	var binary <-chan buildResult
	if !testing.Short() {
		binary = buildWebhook()
	}
	var built buildResult
	code := cluster.TestMainWithCluster(m, cluster.Options{WithoutKwok: true}, func(c *cluster.Cluster) {
		if c == nil {
			return
		}
		built = <-binary
		var err error
		if env, err = setUp(c, built); err != nil {
			fmt.Fprintf(os.Stderr, "webhook e2e set-up: %v\n", err)
			if env != nil {
				_ = env.stopWebhook()
			}
			c.Stop()
			os.Exit(1)
		}
	})
	if env != nil {
		// After the tests: SIGTERM must shut the webhook down cleanly.
		if err := env.stopWebhook(); err != nil {
			fmt.Fprintf(os.Stderr, "webhook e2e: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	if built.path != "" {
		_ = os.RemoveAll(filepath.Dir(built.path))
	}
	os.Exit(code)
}

// buildResult is the webhook binary, or why it could not be built.
type buildResult struct {
	path string
	err  error
}

// buildWebhook builds bin/toposnap-webhook from the repository into a
// temporary directory in the background.
func buildWebhook() <-chan buildResult {
	result := make(chan buildResult, 1)
	go func() {
		root, err := cluster.RepoRoot()
		if err != nil {
			result <- buildResult{err: err}
			return
		}
		dir, err := os.MkdirTemp("", "toposnap-webhook-bin-")
		if err != nil {
			result <- buildResult{err: err}
			return
		}
		path := filepath.Join(dir, "toposnap-webhook")
		build := exec.Command("go", "build", "-o", path, "./webhook/cmd/toposnap-webhook")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			result <- buildResult{err: fmt.Errorf("build toposnap-webhook: %w\n%s", err, out)}
			return
		}
		result <- buildResult{path: path}
	}()
	return result
}

// setUp installs the snapshot CRDs, starts the webhook on a free loopback
// port with a serving certificate from a test CA, registers it with the
// API server and waits until the API server calls it.
func setUp(c *cluster.Cluster, binary buildResult) (*environment, error) {
	if binary.err != nil {
		return nil, binary.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := &environment{cluster: c, dir: filepath.Join(c.Dir, "webhook")}
	if err := os.MkdirAll(e.dir, 0o750); err != nil {
		return nil, err
	}
	var err error
	if e.snapshots, err = snapshotclient.NewForConfig(c.RestConfig); err != nil {
		return nil, fmt.Errorf("snapshot client: %w", err)
	}
	if err := installSnapshotCRDs(ctx, c); err != nil {
		return nil, err
	}
	if e.pki, err = harness.WritePKI(e.dir); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	e.address = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := e.startWebhook(binary.path); err != nil {
		return nil, err
	}
	if err := e.waitHealthy(ctx); err != nil {
		return e, err
	}
	if err := registerWebhooks(ctx, c, "https://"+e.address, e.pki.CAPEM); err != nil {
		return e, err
	}
	if err := waitEffective(ctx, c); err != nil {
		return e, fmt.Errorf("%w (webhook log: %s)", err, e.logPath())
	}
	return e, nil
}

// installSnapshotCRDs applies the upstream snapshot CRDs from the module cache.
func installSnapshotCRDs(ctx context.Context, c *cluster.Cluster) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	list := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		return fmt.Errorf("find snapshot client module: %w", err)
	}
	crds := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	args := []string{"apply"}
	for _, kind := range []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"} {
		args = append(args, "-f", filepath.Join(crds, "snapshot.storage.k8s.io_"+kind+".yaml"))
	}
	if out, err := c.Kubectl(ctx, args...); err != nil {
		return fmt.Errorf("install snapshot CRDs: %w\n%s", err, out)
	}
	if out, err := c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/volumesnapshots.snapshot.storage.k8s.io", "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
		"crd/volumesnapshotclasses.snapshot.storage.k8s.io"); err != nil {
		return fmt.Errorf("wait for snapshot CRDs: %w\n%s", err, out)
	}
	return nil
}
