// Command demo replays the seed's story on the local control plane with all
// five toposnap components: snapshot, restore, a static local PV, topology
// scheduling (the cn-hangzhou-d mistake and its fix), and bad PVCs turned
// away. It prints each step and exits non-zero if one does not hold. With
// KEEP=1 it leaves everything running until interrupted.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\nDEMO FAILED: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	start := time.Now()
	say("Starting the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok)")
	bin, err := cluster.BinDir()
	if err != nil {
		return err
	}
	extenderPort, err := harness.FreePort()
	if err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := cluster.Start(startCtx, cluster.Options{BinDir: bin, SchedulerConfig: harness.SchedulerConfig(extenderPort)})
	if err != nil {
		return err
	}
	defer c.Stop()
	say("Starting toposnap: driver, provisioner and snapshotter on node1 and node2; extender in the scheduler; webhook in the API server")
	env, err := harness.Start(startCtx, c, harness.Options{ExtenderPort: extenderPort, Webhook: true, BtrfsNodePools: true})
	if err != nil {
		return err
	}
	defer env.Stop()
	d := &demo{env: env, ctx: ctx}
	nodes, _ := c.Kubectl(ctx, "get", "nodes", "-L", "topology.kubernetes.io/zone")
	fmt.Printf("%s\n", nodes)

	steps := []struct {
		title string
		run   func() error
	}{
		{"1. Snapshot: a PVC's data is cut into a VolumeSnapshot", d.snapshot},
		{"2. Restore: a PVC from the snapshot has identical data; deleting the snapshot removes its content", d.restore},
		{"3. Local PV: a static PV on node1 binds only once its pod is scheduled there", d.localPV},
		{"4. Topology: a class allowing zone cn-hangzhou-d strands the pod; recreated for cn-hangzhou-b it runs", d.topology},
		{"5. Bad PVCs are turned away by the webhook", d.badClaims},
	}
	for _, step := range steps {
		fmt.Printf("\n== %s\n", step.title)
		if err := step.run(); err != nil {
			return fmt.Errorf("%s: %w", step.title, err)
		}
	}
	fmt.Printf("\nAll five steps held (%s).\n", time.Since(start).Round(time.Second))
	if os.Getenv("KEEP") == "1" {
		fmt.Printf("\nThe cluster stays up until you press Ctrl-C:\n  export KUBECONFIG=%s\n  %s/kubectl get pods,pvc,pv,volumesnapshots -A\nLogs: %s and %s/logs\n",
			c.Kubeconfig, c.BinDir, env.Dir, c.Dir)
		<-ctx.Done()
	}
	return nil
}

func say(format string, args ...any) {
	fmt.Printf("-- "+format+"\n", args...)
}
