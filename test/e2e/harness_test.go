// Package e2e runs toposnap's processes (driver, provisioner, snapshotter on
// each worker node, the extender in the scheduler) against the local control
// plane with the real kube-scheduler and kube-controller-manager, and plays
// the kubelet's volume part on the drivers' sockets where data matters.
package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

var env *harness.Env

func TestMain(m *testing.M) {
	extenderPort, err := harness.FreePort()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	// The seed's cluster plus a worker in a second zone with its own zone
	// pool, for the multi-zone cases. It is tainted so that the seed's
	// single-zone tests never land there; the cases that want it tolerate it.
	nodes := cluster.TwoZoneNodes(corev1.Taint{Key: secondZoneTaint, Effect: corev1.TaintEffectNoSchedule})
	opts := cluster.Options{SchedulerConfig: harness.SchedulerConfig(extenderPort), Nodes: nodes}
	os.Exit(cluster.TestMainWithCluster(m, opts, func(c *cluster.Cluster) {
		if c == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		env, err = harness.Start(ctx, c, harness.Options{ExtenderPort: extenderPort,
			Workers: append(slices.Clone(harness.Workers), cluster.SecondZoneWorker)})
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e set-up: %v\n", err)
			c.Stop()
			os.Exit(1)
		}
	}))
}

// poll waits with a deadline; see cluster.Poll.
var poll = cluster.Poll

func needEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip("needs the local control plane (not started with -short)")
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
