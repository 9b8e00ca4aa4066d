package chaos

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

var (
	seedFlag    = flag.Uint64("chaos.seed", 1, "seed of the campaign (faults, operations, their times)")
	profileFlag = flag.String("chaos.profile", Short.Name, "campaign profile: short (make test) or full (make chaos)")
	reportFlag  = flag.String("chaos.report", "", "file to write the report to (default bin/chaos/seed-<seed>-<profile>.txt in the repository)")
	btrfsFlag   = flag.Bool("chaos.btrfs-pools", false, "each node's pool on a loop-backed btrfs filesystem of its own (sealed volumes: overlays over subvolumes), as in production")
)

var env *harness.Env

// TestMain runs the campaign on a cluster of its own (its faults restart
// the API server and freeze etcd): the seed's nodes plus a worker in a
// second zone, all running toposnap, with the extender and the webhook.
func TestMain(m *testing.M) {
	flag.Parse()
	extenderPort, err := harness.FreePort()
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %v\n", err)
		os.Exit(1)
	}
	opts := cluster.Options{Nodes: cluster.TwoZoneNodes(), SchedulerConfig: harness.SchedulerConfig(extenderPort)}
	code := cluster.TestMainWithCluster(m, opts, func(c *cluster.Cluster) {
		if c == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		env, err = harness.Start(ctx, c, harness.Options{ExtenderPort: extenderPort, Webhook: true,
			Workers: append(slices.Clone(harness.Workers), cluster.SecondZoneWorker), BtrfsNodePools: *btrfsFlag})
		if err != nil {
			fmt.Fprintf(os.Stderr, "chaos set-up: %v\n", err)
			c.Stop()
			os.Exit(1)
		}
	})
	if env != nil {
		env.Stop() // its processes, and with -chaos.btrfs-pools the node pools' filesystems
	}
	os.Exit(code)
}

// TestCampaign plays the campaign of -chaos.seed with -chaos.profile and
// fails with every violation. The one-line summary is logged and, with the
// whole report, written to -chaos.report.
func TestCampaign(t *testing.T) {
	if env == nil {
		t.Skip("needs the local control plane (not started with -short)")
	}
	profile, err := ProfileNamed(*profileFlag)
	if err != nil {
		t.Fatal(err)
	}
	path := *reportFlag
	if path == "" {
		root, err := cluster.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		path = filepath.Join(root, "bin", "chaos", fmt.Sprintf("seed-%d-%s.txt", *seedFlag, profile.Name))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	report, err := Run(ctx, env, *seedFlag, profile)
	if err != nil {
		t.Fatal(err)
	}
	if err := report.WriteFile(path); err != nil {
		t.Errorf("write report: %v", err)
	}
	t.Log(report.Summary())
	fmt.Println(report.Summary()) // also without -v: make chaos prints it
	t.Logf("report written to %s (logs of the toposnap processes in %s)", path, env.Dir)
	for _, violation := range report.Violations {
		t.Errorf("violation: %s", violation)
	}
}

func TestReportSummary(t *testing.T) {
	r := &Report{Seed: 3, Profile: "short",
		FaultCounts: map[FaultKind]int{FaultKill: 5, FaultEtcdPause: 1, FaultAPIServerRestart: 2},
		Operations:  map[OpKind]int{OpClaim: 50, OpRestore: 20},
		Violations:  []string{"x"}, Chaos: 45 * time.Second}
	want := "chaos seed=3 profile=short faults=8 (apiserver-restart=2 etcd-pause=1 kill=5) operations=70 (claim=50 restore=20) violations=1 setup=0s chaos=45s final=0s invariants=0s"
	if got := r.Summary(); got != want {
		t.Errorf("Summary() =\n%s\nwant\n%s", got, want)
	}
}
