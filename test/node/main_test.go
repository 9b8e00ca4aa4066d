package node

import (
	"os"
	"testing"

	"github.com/toposnap/toposnap/test/cluster"
)

// testCluster and testNode are shared by the package's integration tests;
// nil with -short.
var (
	testCluster *cluster.Cluster
	testNode    *Node
)

func TestMain(m *testing.M) {
	os.Exit(TestMainWithNode(m, func(c *cluster.Cluster, n *Node) { testCluster, testNode = c, n }))
}
