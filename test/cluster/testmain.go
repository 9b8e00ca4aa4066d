package cluster

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"
)

// testStartTimeout bounds a test cluster's start-up, binaries already built.
const testStartTimeout = 3 * time.Minute

// TestMainWithCluster runs a test package against one cluster of its own:
// call it from TestMain as
//
//	func TestMain(m *testing.M) {
//		os.Exit(cluster.TestMainWithCluster(m, cluster.Options{}, func(c *cluster.Cluster) { testCluster = c }))
//	}
//
// It builds or finds the binaries, starts the cluster in a temporary
// directory (unless opts.Dir is set) on free ports, hands it to set, runs
// the tests and stops the cluster. The directory is removed when the tests
// pass and kept, with its logs, when they fail. If the cluster cannot start,
// it prints why (with the failing component's log) and returns 1 without
// running the tests. With -short no cluster starts and set gets nil, so
// tests that need one should skip.
func TestMainWithCluster(m *testing.M, opts Options, set func(*Cluster)) int {
	flag.Parse()
	if set == nil {
		set = func(*Cluster) {}
	}
	if testing.Short() {
		set(nil)
		return m.Run()
	}
	c, ownsDir, err := startTestCluster(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		return 1
	}
	set(c)
	code := m.Run()
	c.Stop()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "cluster: tests failed; logs kept in %s\n", c.layout.logs())
		return code
	}
	if ownsDir {
		if err := os.RemoveAll(c.Dir); err != nil {
			fmt.Fprintf(os.Stderr, "cluster: remove %s: %v\n", c.Dir, err)
		}
	}
	return code
}

// startTestCluster starts a cluster in opts.Dir or, reporting ownsDir, in a
// new temporary directory, which is kept for inspection if the start fails.
func startTestCluster(opts Options) (c *Cluster, ownsDir bool, err error) {
	// Resolve the binaries first: building them may take minutes the first
	// time and must not eat into the start-up timeout.
	if opts.BinDir == "" {
		if opts.BinDir, err = BinDir(); err != nil {
			return nil, false, err
		}
	}
	if opts.Dir == "" {
		if opts.Dir, err = os.MkdirTemp("", "toposnap-test-cluster-"); err != nil {
			return nil, false, fmt.Errorf("create cluster directory: %w", err)
		}
		ownsDir = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), testStartTimeout)
	defer cancel()
	if c, err = Start(ctx, opts); err != nil {
		return nil, false, fmt.Errorf("start: %w", err)
	}
	return c, ownsDir, nil
}
