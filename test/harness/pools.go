package harness

// PoolDirs says where the node's driver keeps its pools, as it was started:
// its own node pool (--data-dir) and its zone's pool (--zone-data-dir),
// which every worker of the zone shares. Tests that play a node with root on
// those directories plant files there; an empty string means the driver
// was not started with that pool.
func (n *Node) PoolDirs() (nodePool, zonePool string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	args := n.args["driver"]
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--data-dir":
			nodePool = args[i+1]
		case "--zone-data-dir":
			zonePool = args[i+1]
		}
	}
	return nodePool, zonePool
}
