// Package interop runs toposnap's CSI driver under the upstream sidecars
// instead of toposnap's own controllers: external-provisioner
// (csi-provisioner, one per node with --node-deployment and strict
// topology), external-snapshotter's csi-snapshotter (one per node with
// --node-deployment) and its snapshot-controller (one per cluster, with
// distributed snapshotting). The drivers are the harness's (test/harness):
// one per node, the nodes of a zone sharing the zone's pool, as the chart's
// DaemonSet runs them. Its tests prove that claims bind with the right PV
// affinity, snapshots become ready and restores hold the source's data;
// its benchmarks compare toposnap's provisioner and snapshotter with the
// sidecars on the same drivers in the same run (docs/interop.md).
package interop

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// The cluster: the seed's master and node1, node2 in zone cn-hangzhou-b,
// plus node3 in cn-hangzhou-c, none tainted but the master. Every node runs
// the driver, the master too, because the chart's DaemonSet tolerates every
// taint, and because the upstream snapshot-controller may hand a zone
// volume's snapshot to any node its PV's affinity matches (docs/interop.md).
var workers = []string{"master", "node1", "node2", cluster.SecondZoneWorker}

var (
	env *harness.Env
	// sidecarBin holds csi-provisioner, csi-snapshotter and
	// snapshot-controller (hack/build-sidecars.sh).
	sidecarBin string
	// controllers says which provisioner and snapshotter run on env now.
	controllers *switcher
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// Build the sidecars before the cluster starts: the first build takes
	// minutes and must not eat into the cluster's start-up timeout.
	flag.Parse() // for -short; TestMainWithCluster parses again, harmlessly
	if !testing.Short() {
		dir, err := sidecarBinDir()
		if err != nil {
			fmt.Fprintf(os.Stderr, "interop: %v\n", err)
			return 1
		}
		sidecarBin = dir
	}
	extenderPort, err := harness.FreePort()
	if err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		return 1
	}
	// No extender in the scheduler: it is not what is compared, and with
	// the upstream sidecars nothing records where a snapshot lives for it
	// (docs/interop.md). The harness still runs the process.
	opts := cluster.Options{Nodes: cluster.TwoZoneNodes()}
	if keepLogs() {
		// A directory of ours outlives the run, with the control plane's
		// logs (kube-controller-manager's binding, client throttling).
		if opts.Dir, err = os.MkdirTemp("", "toposnap-interop-cluster-"); err != nil {
			fmt.Fprintf(os.Stderr, "interop: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "interop: cluster files kept in %s\n", opts.Dir)
	}
	code := cluster.TestMainWithCluster(m, opts, func(c *cluster.Cluster) {
		if c == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		env, err = harness.Start(ctx, c, harness.Options{ExtenderPort: extenderPort, Workers: workers})
		if err != nil {
			fmt.Fprintf(os.Stderr, "interop set-up: %v\n", err)
			c.Stop()
			os.Exit(1)
		}
		if controllers, err = newSwitcher(env, sidecarBin); err != nil {
			fmt.Fprintf(os.Stderr, "interop set-up: %v\n", err)
			c.Stop()
			os.Exit(1)
		}
	})
	if controllers != nil {
		controllers.stop()
	}
	if env != nil {
		env.Stop()
		if code != 0 || keepLogs() {
			fmt.Fprintf(os.Stderr, "interop: component logs kept in %s\n", env.Dir)
		} else {
			_ = os.RemoveAll(env.Dir)
		}
	}
	return code
}

// keepLogs: TOPOSNAP_INTEROP_KEEP keeps the logs of a passing run too, to
// study where a benchmark's time went.
func keepLogs() bool { return os.Getenv("TOPOSNAP_INTEROP_KEEP") != "" }

// poll waits with a deadline; see cluster.Poll.
var poll = cluster.Poll

func needEnv(tb testing.TB) {
	tb.Helper()
	if env == nil {
		tb.Skip("needs the local control plane (not started with -short)")
	}
}

func ctxFor(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
