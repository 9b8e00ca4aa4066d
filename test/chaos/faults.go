package chaos

import (
	"context"
	"fmt"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// Targets lists every toposnap process of the environment.
func Targets(env *harness.Env) []Target {
	var targets []Target
	for _, node := range env.AllNodes() {
		for _, component := range node.Components() {
			targets = append(targets, Target{Node: node.Name, Component: component})
		}
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].String() < targets[j].String() })
	return targets
}

// injected is what happened to one planned fault.
type injected struct {
	Fault
	// Late is how far behind its plan it ran (a slow API server restart
	// delays the next fault).
	Late time.Duration
	Err  error
}

// inject runs the planned faults in order, each at its offset from start
// (or at once when behind), and undoes each before the next: a killed
// process is started again, a paused etcd resumed. It returns when all
// have run or ctx ends.
func inject(ctx context.Context, env *harness.Env, start time.Time, faults []Fault) []injected {
	nodes := map[string]*harness.Node{}
	for _, node := range env.AllNodes() {
		nodes[node.Name] = node
	}
	var done []injected
	for _, fault := range faults {
		if !waitUntil(ctx, start.Add(fault.At)) {
			break
		}
		record := injected{Fault: fault, Late: time.Since(start.Add(fault.At))}
		klog.InfoS("Injecting fault", "fault", fault.String())
		switch fault.Kind {
		case FaultKill:
			node := nodes[fault.Target.Node]
			if node == nil {
				record.Err = fmt.Errorf("no node %s", fault.Target.Node)
				break
			}
			node.Kill(fault.Target.Component)
			waitUntil(ctx, time.Now().Add(fault.Hold)) // the crash's downtime
			record.Err = node.Restart(fault.Target.Component)
		case FaultAPIServerRestart:
			record.Err = env.Cluster.Restart(ctx, cluster.APIServer)
		case FaultEtcdPause:
			if record.Err = env.Cluster.Pause(cluster.Etcd); record.Err != nil {
				break
			}
			waitUntil(ctx, time.Now().Add(fault.Hold)) // how long etcd stays frozen
			record.Err = env.Cluster.Resume(cluster.Etcd)
		}
		if record.Err != nil {
			klog.ErrorS(record.Err, "Fault could not be undone", "fault", fault.String())
		}
		done = append(done, record)
	}
	return done
}

// recoverAll makes sure nothing is left broken by a fault cut short: etcd
// running, every toposnap process started.
func recoverAll(ctx context.Context, env *harness.Env) []error {
	var errs []error
	if err := env.Cluster.Resume(cluster.Etcd); err != nil {
		errs = append(errs, err)
	}
	for _, node := range env.AllNodes() {
		for _, component := range node.Components() {
			if err := node.Restart(component); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// waitUntil blocks until t or until ctx ends, reporting which. It paces the
// plan; it synchronises nothing.
func waitUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
