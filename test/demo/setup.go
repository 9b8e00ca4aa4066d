package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/testpool"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/node"
)

// nodePoolSize is the loop-backed btrfs filesystem holding the real node's
// pool: sparse, so it costs only what the volumes hold.
const nodePoolSize = 4 << 30

// stage is everything the demo runs on, all under one directory.
type stage struct {
	dir     string
	cluster *cluster.Cluster
	node    *node.Node
	pool    *testpool.Btrfs
	// hostname is the real node's kubernetes.io/hostname label: what a
	// local PV's nodeAffinity and the chart's nodeSelectors match.
	hostname string
	// nodePool and zonePool are the host directories of the driver's
	// pools; localDisk is the one behind the static local PV.
	nodePool, zonePool, localDisk string
	snaps                         snapshotclient.Interface
}

// demoNodes are the seed's tainted master and its worker node1, as Node
// objects only: no kubelet runs behind them, so the scheduler weighs them
// but a pod bound to them never starts. The real node joins as the second
// worker of zone cn-hangzhou-b.
func demoNodes() []corev1.Node {
	return slices.DeleteFunc(cluster.SeedNodes(), func(n corev1.Node) bool { return n.Name == "node2" })
}

// startStage starts the control plane, the real node, and toposnap on it
// through helm. On error, what was started is stopped and the files kept.
func startStage(ctx context.Context) (_ *stage, err error) {
	s := &stage{}
	if s.dir, err = os.MkdirTemp("", "toposnap-demo-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.stop(false)
		}
	}()
	// The disks first: a machine that cannot make them fails in seconds.
	if err := s.makeDisks(); err != nil {
		return nil, err
	}
	say("Starting the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with Node objects master and node1")
	opts := node.ClusterOptions()
	opts.Nodes = demoNodes()
	opts.Dir = filepath.Join(s.dir, "cluster")
	if opts.BinDir, err = cluster.BinDir(); err != nil {
		return nil, err
	}
	if s.cluster, err = cluster.Start(ctx, opts); err != nil {
		return nil, fmt.Errorf("start the control plane: %w", err)
	}
	if s.snaps, err = snapshotclient.NewForConfig(s.cluster.RestConfig); err != nil {
		return nil, err
	}
	say("Starting a real node (containerd + kubelet v1.37.2) in zone %s", cluster.SeedZone)
	if s.node, err = node.Start(ctx, s.cluster, node.Options{Dir: filepath.Join(s.dir, "node")}); err != nil {
		return nil, fmt.Errorf("start the real node: %w", err)
	}
	joined, err := s.cluster.Client.CoreV1().Nodes().Get(ctx, s.node.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if s.hostname = joined.Labels[corev1.LabelHostname]; s.hostname == "" {
		return nil, fmt.Errorf("node %s has no %s label", s.node.Name, corev1.LabelHostname)
	}
	say("Installing toposnap on %s with helm (charts/toposnap, the image built from this tree): node plugin, extender in toposnap-scheduler, webhook", s.node.Name)
	if err := s.node.InstallToposnap(ctx, node.InstallOptions{Values: s.chartValues()}); err != nil {
		pods, _ := s.cluster.Kubectl(context.WithoutCancel(ctx), "get", "pods,events", "-n", node.ReleaseNamespace, "-o", "wide")
		return nil, fmt.Errorf("helm install: %w\n%s", err, pods)
	}
	return s, nil
}

// makeDisks makes the real node's disks: a loop-backed btrfs node pool
// (sizes enforced by qgroups, snapshots cut in constant time), a zone pool
// directory, and the directory behind the static local PV.
func (s *stage) makeDisks() error {
	btrfsDir := filepath.Join(s.dir, "btrfs")
	if err := os.MkdirAll(btrfsDir, 0o755); err != nil {
		return err
	}
	var err error
	if s.pool, err = testpool.NewBtrfs(btrfsDir, nodePoolSize); err != nil {
		return fmt.Errorf("node pool: %w", err)
	}
	s.nodePool = filepath.Join(s.pool.Dir, "pool")
	s.zonePool = filepath.Join(s.dir, "zone-"+cluster.SeedZone)
	s.localDisk = filepath.Join(s.dir, "disks", "ssd1")
	for _, dir := range []string{s.nodePool, s.zonePool, s.localDisk} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// chartValues point the chart at the disks and keep every toposnap pod on
// the real node: the Node objects without a kubelet would never run them,
// and helm --wait would wait for them forever.
func (s *stage) chartValues() map[string]any {
	onRealNode := map[string]any{corev1.LabelHostname: s.hostname}
	return map[string]any{
		"node": map[string]any{
			"pool":         map[string]any{"hostPath": s.nodePool, "capacity": "3Gi", "backend": "btrfs"},
			"zonePool":     map[string]any{"hostPath": s.zonePool, "capacity": "10Gi", "backend": "dir"},
			"nodeSelector": onRealNode,
		},
		"extender":  map[string]any{"nodeSelector": onRealNode},
		"webhook":   map[string]any{"nodeSelector": onRealNode},
		"scheduler": map[string]any{"nodeSelector": onRealNode},
	}
}

// stop tears everything down in reverse order: the node first (it unmounts
// the volumes its pods used), then the pool's filesystem, then the control
// plane. The directory goes only when the demo succeeded and nothing is
// mounted under it any more; otherwise it is kept for its logs.
func (s *stage) stop(succeeded bool) {
	if s.node != nil {
		s.node.Stop()
	}
	if s.pool != nil {
		if err := s.pool.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
			succeeded = false
		}
	}
	if s.cluster != nil {
		s.cluster.Stop()
	}
	if s.dir == "" {
		return
	}
	if mounted, err := mountedUnder(s.dir); err != nil || len(mounted) > 0 {
		fmt.Fprintf(os.Stderr, "demo: %s kept: still mounted under it: %v %v\n", s.dir, mounted, err)
		return
	}
	if !succeeded {
		fmt.Fprintf(os.Stderr, "demo: files and logs kept in %s (control plane: cluster/logs; node: node/logs, node/pod-logs)\n", s.dir)
		return
	}
	if err := os.RemoveAll(s.dir); err != nil {
		fmt.Fprintf(os.Stderr, "demo: remove %s: %v\n", s.dir, err)
	}
}

// mountedUnder lists the mount points at or below dir, so that removing
// the directory can never reach into a filesystem still mounted there.
func mountedUnder(dir string) ([]string, error) {
	file, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var mounted []string
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 5 {
			continue
		}
		point := fields[4]
		if point == dir || strings.HasPrefix(point, dir+"/") {
			mounted = append(mounted, point)
		}
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return mounted, nil
}
