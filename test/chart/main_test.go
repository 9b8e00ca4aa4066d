// Package chart tests the Helm chart charts/toposnap: helm lint and the
// values schema, rendering with several value sets, the real API server's
// verdict on every rendered object (server-side dry run against the local
// control plane), the webhook configurations against webhook.Configurations,
// least-privilege RBAC, a real install, upgrade and uninstall keeping the
// webhook's CA, and the snapshot CRD copies against their generator.
//
// helm is built from the Go module proxy by hack/build-helm.sh (minutes the
// first time, then cached). Without a cluster (-short) the tests that need
// one skip; the others still run.
package chart

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// dryRunNamespace holds the namespaced objects of the server-side dry runs.
const dryRunNamespace = "toposnap-dryrun"

var (
	// testCluster is the local control plane; nil with -short.
	testCluster *cluster.Cluster
	// repoRoot is the repository; chartDir its chart.
	repoRoot, chartDir string
	// helmPath is the helm binary hack/build-helm.sh built.
	helmPath string
	// helmHome keeps helm's config, cache and data out of $HOME.
	helmHome string
	// components is where the component binaries are built, with the
	// cluster only (see TestComponentsRunWithTheChartsRBAC).
	components func() buildResult
)

// buildResult is a directory of built binaries, or why the build failed.
type buildResult struct {
	dir string
	err error
}

func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	if repoRoot, err = cluster.RepoRoot(); err != nil {
		fmt.Fprintf(os.Stderr, "chart: %v\n", err)
		os.Exit(1)
	}
	chartDir = filepath.Join(repoRoot, "charts", "toposnap")
	if helmHome, err = os.MkdirTemp("", "toposnap-chart-helm-"); err != nil {
		fmt.Fprintf(os.Stderr, "chart: %v\n", err)
		os.Exit(1)
	}
	// Build (or find) helm while the cluster starts.
	built := make(chan error, 1)
	go func() {
		path, err := buildHelm()
		helmPath = path
		built <- err
	}()
	if !testing.Short() {
		components = sync.OnceValue(buildComponents())
	}
	code := cluster.TestMainWithCluster(m, cluster.Options{WithoutKwok: true}, func(c *cluster.Cluster) {
		if err := <-built; err != nil {
			fmt.Fprintf(os.Stderr, "chart: %v\n", err)
			if c != nil {
				c.Stop()
			}
			os.Exit(1)
		}
		if c == nil {
			return
		}
		testCluster = c
		if err := setUp(c); err != nil {
			fmt.Fprintf(os.Stderr, "chart set-up: %v\n", err)
			c.Stop()
			os.Exit(1)
		}
	})
	_ = os.RemoveAll(helmHome)
	if components != nil {
		if built := components(); built.dir != "" {
			_ = os.RemoveAll(built.dir)
		}
	}
	os.Exit(code)
}

// buildComponents starts building the six commands into a temporary
// directory and returns a function that waits for the result.
func buildComponents() func() buildResult {
	result := make(chan buildResult, 1)
	go func() {
		dir, err := os.MkdirTemp("", "toposnap-chart-bin-")
		if err != nil {
			result <- buildResult{err: err}
			return
		}
		build := exec.Command("go", "build", "-o", dir+"/", "./driver/cmd/toposnap-driver", "./provisioner/cmd/toposnap-provisioner",
			"./provisioner/cmd/toposnap-controller", "./snapshotter/cmd/toposnap-snapshotter", "./extender/cmd/toposnap-extender",
			"./webhook/cmd/toposnap-webhook")
		build.Dir = repoRoot
		if out, err := build.CombinedOutput(); err != nil {
			result <- buildResult{dir: dir, err: fmt.Errorf("build components: %w\n%s", err, out)}
			return
		}
		result <- buildResult{dir: dir}
	}()
	return func() buildResult { return <-result }
}

// buildHelm runs hack/build-helm.sh and returns the path it prints last.
func buildHelm() (string, error) {
	begin := time.Now()
	cmd := exec.Command(filepath.Join(repoRoot, "hack", "build-helm.sh"))
	cmd.Dir = repoRoot
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/build-helm.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	path := strings.TrimSpace(lines[len(lines)-1])
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("hack/build-helm.sh printed %q: %w", path, err)
	}
	if elapsed := time.Since(begin); elapsed > 10*time.Second {
		fmt.Fprintf(os.Stderr, "chart: helm ready at %s after %s\n", path, elapsed.Round(time.Second))
	}
	return path, nil
}

// setUp installs the upstream snapshot CRDs (the chart's VolumeSnapshotClass
// needs them served) and the dry runs' namespace.
func setUp(c *cluster.Cluster) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := harness.InstallSnapshotCRDs(ctx, c, repoRoot); err != nil {
		return err
	}
	if out, err := c.Kubectl(ctx, "create", "namespace", dryRunNamespace); err != nil {
		return fmt.Errorf("create namespace %s: %w\n%s", dryRunNamespace, err, out)
	}
	return nil
}

// needCluster skips a test that needs the local control plane.
func needCluster(t *testing.T) {
	t.Helper()
	if testCluster == nil {
		t.Skip("needs the local control plane (not started with -short)")
	}
}

// ctxFor is a context that ends after d or with the test.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runHelm runs helm with args and returns its stdout; the error carries
// stderr. With a cluster, helm talks to it.
func runHelm(ctx context.Context, args ...string) ([]byte, error) {
	if testCluster != nil {
		args = append(args, "--kubeconfig", testCluster.Kubeconfig)
	}
	cmd := exec.CommandContext(ctx, helmPath, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(helmHome, "config"),
		"HELM_CACHE_HOME="+filepath.Join(helmHome, "cache"),
		"HELM_DATA_HOME="+filepath.Join(helmHome, "data"),
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
