// Package scalebench measures what toposnap costs a cluster as it grows:
// on a real control plane (test/cluster) with kwok nodes and bound PVC+PV
// pairs created in bulk, it starts one node's toposnap processes and the
// central ones as real processes, each with an API identity of its own,
// and reports each process's resident memory, peak memory and Go heap once
// its caches are filled, the watches each one holds on the API server, how
// many watch events one PVC update costs (to the control plane, to the
// central processes, and to the measured node's processes for a PVC that is
// not theirs), and the requests each process sends while idle.
//
// Which processes run is the table in processes.go: when the node
// processes become node agents (issue 20), edit that table and the same
// bench measures them.
//
// BenchmarkScale (make bench-scale) runs the grid BENCH_SCALE_PAIRS x
// BENCH_SCALE_NODES and writes bin/bench-scale/results.json and
// results.md; TestScaleBenchSmoke runs one small point in make test.
package scalebench
