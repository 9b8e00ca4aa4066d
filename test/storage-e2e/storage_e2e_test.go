package storagee2e

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/node"
)

// DefaultFocus is the subset `make test` runs: dynamic provisioning and
// volume IO on file-system volumes, snapshots with deletionPolicy Delete,
// and topology with delayed binding.
const DefaultFocus = `External.Storage \[Driver: csi.toposnap.io\] \[Testpattern: (` +
	`Dynamic PV \(default fs\)\] (provisioning|volumeIO)|` +
	`Dynamic Snapshot \(delete policy\)\] snapshottable|` +
	`Dynamic PV \(delayed binding\)\] topology)`

// DefaultSkip leaves out what cannot run here (docs/conformance.md):
// [Disruptive] specs restart the kubelet over SSH; "any volume data source"
// needs the hello-populator and volume-data-source-validator images, whose
// modules the Go module proxy does not serve; "unused volumes in a pod"
// looks into the kubelet's directory through nsenter into PID 1's mount
// namespace, which this VM's init refuses even to root. `make conformance`
// skips the same (CONFORMANCE_SKIP).
const DefaultSkip = `\[Disruptive\]|should provision storage with any volume data source|should not mount / map unused volumes in a pod`

// AllFocus is every External.Storage spec of csi.toposnap.io (make conformance).
const AllFocus = `External.Storage \[Driver: csi.toposnap.io\]`

var (
	focus     = flag.String("storage-e2e.focus", DefaultFocus, "ginkgo focus of the e2e.test run")
	skip      = flag.String("storage-e2e.skip", DefaultSkip, "ginkgo skip of the e2e.test run")
	reportDir = flag.String("storage-e2e.report-dir", "", "where e2e.test writes its junit report (default: a temporary directory)")
)

var (
	testCluster *cluster.Cluster
	testNode    *node.Node
)

func TestMain(m *testing.M) {
	os.Exit(node.TestMainWithNode(m, func(c *cluster.Cluster, n *node.Node) { testCluster, testNode = c, n }))
}

// TestExternalStorage installs toposnap with helm on a real node and runs
// Kubernetes' external storage suite against it; any failed spec fails the
// test. The log ends with ginkgo's Passed/Failed/Skipped counts.
func TestExternalStorage(t *testing.T) {
	if testNode == nil {
		t.Skip("needs a real node (not with -short)")
	}
	binDir, err := node.NodeBinDir("e2e.test")
	if err != nil {
		t.Fatalf("e2e.test: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Hour)
	defer cancel()
	installCtx, cancelInstall := context.WithTimeout(ctx, 15*time.Minute)
	defer cancelInstall()
	if err := testNode.InstallToposnap(installCtx, node.InstallOptions{}); err != nil {
		t.Fatalf("install toposnap: %v", err)
	}
	testDriver, err := filepath.Abs("testdriver.yaml")
	if err != nil {
		t.Fatal(err)
	}
	reports := *reportDir
	if reports == "" {
		reports = t.TempDir()
	}
	begin := time.Now()
	summary, _, err := Run(ctx, RunOptions{
		E2ETest:    filepath.Join(binDir, "e2e.test"),
		Kubeconfig: testCluster.Kubeconfig,
		TestDriver: testDriver,
		Focus:      *focus,
		Skip:       *skip,
		ReportDir:  reports,
		Output:     os.Stdout,
	})
	if err != nil {
		t.Fatalf("e2e.test: %v", err)
	}
	t.Logf("external storage suite in %s: %s (junit report in %s)", time.Since(begin).Round(time.Second), summary, reports)
	if summary.Ran == 0 {
		t.Fatalf("no spec ran: the focus %q matches nothing", *focus)
	}
	if summary.Failed > 0 || !summary.Succeeded {
		t.Fatalf("external storage suite failed: %s", summary)
	}
}
