// Package e2e runs toposnap's processes (driver, provisioner, snapshotter on
// each worker node, the extender in the scheduler) against the local control
// plane with the real kube-scheduler and kube-controller-manager, and plays
// the kubelet's volume part on the drivers' sockets where data matters.
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

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
	opts := cluster.Options{SchedulerConfig: harness.SchedulerConfig(extenderPort)}
	os.Exit(cluster.TestMainWithCluster(m, opts, func(c *cluster.Cluster) {
		if c == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		env, err = harness.Start(ctx, c, harness.Options{ExtenderPort: extenderPort})
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
