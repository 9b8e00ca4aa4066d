// Package startup starts toposnap's processes before the API server answers
// and before the snapshot CRDs exist, then makes both available, and checks
// that each process picks them up: the extender places restores where their
// snapshots live, the webhook admits them, the provisioner provisions plain
// claims at once and restores once the CRDs appear, the snapshotter cuts
// snapshots. The API server is reached through a TCP proxy that refuses
// connections while "down" (test/cluster runs the control plane).
package startup

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/toposnap/toposnap/test/cluster"
)

var (
	testCluster *cluster.Cluster
	// bin holds the toposnap binaries, built once for the package.
	bin string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

// run builds the binaries (unless -short), runs the tests on a cluster of
// their own and removes the binaries.
func run(m *testing.M) int {
	flag.Parse()
	if !testing.Short() {
		dir, err := os.MkdirTemp("", "toposnap-startup-bin-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "startup: %v\n", err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }()
		if err := build(dir); err != nil {
			fmt.Fprintf(os.Stderr, "startup: %v\n", err)
			return 1
		}
		bin = dir
	}
	// Without kwok: no pod runs here (the test asks the extender itself
	// where a pod would go), and the nodes stay as registered.
	return cluster.TestMainWithCluster(m, cluster.Options{WithoutKwok: true}, func(c *cluster.Cluster) { testCluster = c })
}

// build compiles the five binaries into dir, as test/harness does.
func build(dir string) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"./driver/cmd/toposnap-driver", "./provisioner/cmd/toposnap-provisioner", "./snapshotter/cmd/toposnap-snapshotter",
		"./extender/cmd/toposnap-extender", "./webhook/cmd/toposnap-webhook")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build components: %w\n%s", err, out)
	}
	return nil
}
