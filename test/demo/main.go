// Command demo replays the seed's story on a local control plane with a
// real node (containerd + kubelet) where toposnap is installed by helm from
// charts/toposnap: real pods write data into a toposnap volume and read it
// back from its restore, a static local PV binds once its pod is scheduled,
// topology scheduling goes wrong (cn-hangzhou-d) and is fixed, and bad PVCs
// are turned away. It prints each step and exits non-zero if one does not
// hold. With KEEP=1 it leaves everything running until interrupted.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// startTimeout bounds the start-up: control plane, real node, image build
// and helm install (binaries are built by the Makefile's prerequisites).
const startTimeout = 30 * time.Minute

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
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	s, err := startStage(startCtx)
	if err != nil {
		return err
	}
	succeeded := false
	defer func() { s.stop(succeeded) }()
	busybox, err := busyboxImage(s.node.Images)
	if err != nil {
		return err
	}
	d := &demo{stage: s, ctx: ctx, busybox: busybox}
	say("Ready after %s", time.Since(start).Round(time.Second))
	nodes, _ := s.cluster.Kubectl(ctx, "get", "nodes", "-L", "topology.kubernetes.io/zone")
	fmt.Printf("%s", nodes)
	fmt.Printf("(master and node1 are Node objects only, as in the seed's cluster; no kubelet runs behind them. %s is a real node: every pod that runs, runs there.)\n", s.node.Name)

	steps := []struct {
		title string
		run   func() error
	}{
		{"1. Snapshot: a pod writes into a PVC; the data is cut into a VolumeSnapshot", d.snapshot},
		{"2. Restore: a pod on a PVC from the snapshot reads identical data; deleting the snapshot removes its content", d.restore},
		{"3. Local PV: a static PV on " + s.node.Name + " binds only once its pod is scheduled there", d.localPV},
		{"4. Topology: a class allowing zone cn-hangzhou-d strands the pod; recreated for cn-hangzhou-b it is scheduled", d.topology},
		{"5. Bad PVCs are turned away by the webhook", d.badClaims},
	}
	for _, step := range steps {
		fmt.Printf("\n== %s\n", step.title)
		began := time.Now()
		if err := step.run(); err != nil {
			return fmt.Errorf("%s: %w", step.title, err)
		}
		say("(%s)", time.Since(began).Round(100*time.Millisecond))
	}
	fmt.Printf("\nAll five steps held (%s in all).\n", time.Since(start).Round(time.Second))
	succeeded = true
	if os.Getenv("KEEP") == "1" {
		keep(ctx, d)
	}
	return nil
}

// keep prints how to look around, then waits for Ctrl-C.
func keep(ctx context.Context, d *demo) {
	kubectl := fmt.Sprintf("%s --kubeconfig %s", filepath.Join(d.cluster.BinDir, "kubectl"), d.cluster.Kubeconfig)
	fmt.Printf(`
Everything stays up until you press Ctrl-C here. In another terminal:
  %[1]s exec -it writer -- sh                      # the pod that wrote %[2]s into disk-pvc
  %[1]s exec -it reader -- sh                      # the pod on restore-pvc, made from disk-snapshot
  %[1]s exec reader -- sha256sum %[2]s
  %[1]s get pods,pvc,pv,volumesnapshots,volumesnapshotcontents -o wide
  %[1]s describe pod zone-pod                      # the FailedScheduling events, then the scheduling in zone b
  %[1]s get pods -n toposnap-system -o wide        # toposnap as helm installed it
Logs: control plane %[3]s/logs; node %[4]s/logs; pods %[4]s/pod-logs
`, kubectl, dataFile, d.cluster.Dir, d.node.Dir)
	<-ctx.Done()
}

func say(format string, args ...any) {
	fmt.Printf("-- "+format+"\n", args...)
}
