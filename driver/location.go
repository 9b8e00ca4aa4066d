package driver

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// resolveLocation finds this node's zone and region: from its Node object
// when an API server is configured, else from the --zone/--region flags.
func resolveLocation(ctx context.Context, opts Options) (topology.Location, error) {
	if opts.Kubeconfig == "" && !opts.InCluster {
		return topology.Location{Node: opts.NodeID, Zone: opts.Zone, Region: opts.Region}, nil
	}
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return topology.Location{}, err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return topology.Location{}, fmt.Errorf("create API client: %w", err)
	}
	var node *corev1.Node
	// The Node object may not exist yet while its kubelet registers: retry.
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		node, err = client.CoreV1().Nodes().Get(ctx, opts.NodeID, metav1.GetOptions{})
		if err != nil {
			klog.V(2).InfoS("Waiting for Node object", "node", opts.NodeID, "err", err)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return topology.Location{}, fmt.Errorf("read Node %s for its zone and region: %w", opts.NodeID, err)
	}
	location := topology.LocationFromLabels(opts.NodeID, node.Labels)
	// Flags fill what the labels leave out.
	if location.Zone == "" {
		location.Zone = opts.Zone
	}
	if location.Region == "" {
		location.Region = opts.Region
	}
	return location, nil
}
