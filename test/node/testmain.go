package node

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
)

// startTimeout bounds a test node's start-up once its binaries and images
// are built (those are built before the clock starts).
const startTimeout = 5 * time.Minute

// TestMainWithNode runs a test package against a control plane and one
// real node of its own: call it from TestMain as
//
//	func TestMain(m *testing.M) {
//		os.Exit(node.TestMainWithNode(m, func(c *cluster.Cluster, n *node.Node) { ... }))
//	}
//
// The node is stopped before the cluster; both directories are kept, with
// their logs, when the tests fail. With -short nothing starts and set gets
// nils, so tests that need the node should skip.
func TestMainWithNode(m *testing.M, set func(*cluster.Cluster, *Node)) int {
	flag.Parse()
	if testing.Short() {
		set(nil, nil)
		return m.Run()
	}
	c, n, err := startTestNode()
	if err != nil {
		fmt.Fprintf(os.Stderr, "node: %v\n", err)
		return 1
	}
	set(c, n)
	code := m.Run()
	if code != 0 {
		n.removeDir = false
		fmt.Fprintf(os.Stderr, "node: tests failed; logs kept in %s and %s/logs\n", n.path("logs"), c.Dir)
		n.Stop()
		c.Stop()
		return code
	}
	n.Stop()
	c.Stop()
	if err := os.RemoveAll(c.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "node: remove %s: %v\n", c.Dir, err)
	}
	return code
}

// startTestNode builds what is missing, then starts a cluster and the node.
func startTestNode() (*cluster.Cluster, *Node, error) {
	opts := ClusterOptions()
	// Only real nodes here: the node lifecycle controller runs, as in a
	// real cluster.
	opts.NodeLifecycleController = true
	var err error
	if opts.BinDir, err = cluster.BinDir(); err != nil {
		return nil, nil, err
	}
	// Build the node's binaries and images before any clock starts.
	if _, err := NodeBinDir("kubelet", "agnhost"); err != nil {
		return nil, nil, err
	}
	if opts.Dir, err = os.MkdirTemp("", "toposnap-node-cluster-"); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("start cluster: %w", err)
	}
	n, err := Start(ctx, c, Options{})
	if err != nil {
		c.Stop()
		return nil, nil, err
	}
	return c, n, nil
}
