package cluster

import (
	"errors"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
)

// Options says what cluster Start runs. The zero value is the seed's demo
// cluster in a temporary directory, with kwok.
type Options struct {
	// BinDir holds the control-plane binaries; empty means BinDir().
	BinDir string
	// Dir is the work directory for credentials, etcd data, logs
	// (Dir/logs/<component>.log) and the admin kubeconfig (Dir/kubeconfig).
	// It must not hold a previous cluster's files. Empty means a new
	// temporary directory, which Stop removes.
	Dir string
	// Nodes are registered and reported Ready at start; nil means SeedNodes().
	// A node's Status.Allocatable/Capacity, when set, is what it offers.
	Nodes []corev1.Node
	// SchedulerConfig is the whole KubeSchedulerConfiguration YAML of
	// kube-scheduler, replacing DefaultSchedulerConfig(""); build it with
	// DefaultSchedulerConfig to add extenders. If it leaves
	// clientConnection.kubeconfig empty, Start points it at the scheduler's
	// own kubeconfig. Leader election is always off.
	SchedulerConfig string
	// WithoutKwok leaves nodes and pods alone after start: no heartbeats, and
	// bound pods stay Pending. By default kwok plays every node's kubelet.
	WithoutKwok bool
	// NodeLifecycleController runs the controller manager's node lifecycle
	// controller, which takes a Ready node's not-ready taint off and marks a
	// node whose kubelet stops renewing its lease NotReady. Only for
	// clusters of real kubelets: it needs WithoutKwok and no fake Nodes
	// (nothing would renew their leases); nil Nodes then means none.
	NodeLifecycleController bool
}

// withDefaults fills in what the caller left empty. It reports whether it
// created the work directory, which then belongs to the cluster.
func (o Options) withDefaults() (Options, bool, error) {
	if o.BinDir == "" {
		dir, err := BinDir()
		if err != nil {
			return o, false, err
		}
		o.BinDir = dir
	}
	if o.NodeLifecycleController {
		if !o.WithoutKwok || len(o.Nodes) > 0 {
			return o, false, errors.New("the node lifecycle controller needs real kubelets: set WithoutKwok and no Nodes")
		}
		o.Nodes = []corev1.Node{} // not the seed's: only kubelets register nodes
	}
	if o.Nodes == nil {
		o.Nodes = SeedNodes()
	}
	if o.SchedulerConfig == "" {
		o.SchedulerConfig = DefaultSchedulerConfig("")
	}
	if o.Dir != "" {
		return o, false, nil
	}
	dir, err := os.MkdirTemp("", "toposnap-cluster-")
	if err != nil {
		return o, false, fmt.Errorf("create cluster directory: %w", err)
	}
	o.Dir = dir
	return o, true, nil
}
