// Package schedbench measures what toposnap's extender costs kube-scheduler
// and checks that only pods using toposnap volumes pay it: the webhook gives
// those pods webhook.VolumeResource, and the scheduler lists that resource
// under the extender's managedResources (ignoredByScheduler: true).
//
// TestOnlyMarkedPodsReachTheExtender runs in make test. BenchmarkScheduling
// (make bench-sched) schedules, in one run and on kwok nodes in three zones,
// plain pods with and without the extender registered, and pods with one
// zone-scope WaitForFirstConsumer claim each with and without the extender,
// and prints the throughput ratios.
package schedbench
