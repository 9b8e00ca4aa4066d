// Package chaos runs toposnap's seeded chaos campaign (issue 10) on the
// local control plane with the harness: while a workload of claims,
// snapshots, restores and deletes is in flight, it SIGKILLs toposnap
// processes (driver included), restarts kube-apiserver and pauses etcd at
// points drawn from the seed; once the faults stop, every object must reach
// its final state within a bound and every invariant of harness.Checker
// must hold. The plan (which faults, which operations, when) is a pure
// function of the seed, so a failing seed can be replayed; how the
// cluster's own timing interleaves with it is not.
//
// `make chaos SEED=n` runs the full profile for one seed; `make test` runs
// the short profile for seed 1. See docs/chaos.md.
package chaos
