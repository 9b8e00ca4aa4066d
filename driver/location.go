package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// uninitializedTaint is set by the kubelet on a node of a cloud provider
// until the cloud-controller-manager has initialized it, which is when the
// zone and region labels appear.
const uninitializedTaint = "node.cloudprovider.kubernetes.io/uninitialized"

// Default pacing of the reads of this node's Node object at start-up.
const (
	defaultNodeRetryInitial = time.Second
	defaultNodeRetryMax     = 30 * time.Second
)

// resolveLocation finds this node's zone and region: from its Node object
// when an API server is configured, else from the --zone/--region flags.
//
// The answer becomes NodeGetInfo's topology, which the kubelet copies into
// CSINode once, at registration: a wrong answer would stay until the driver
// is restarted and re-registered. So the driver never guesses. It reads the
// Node until it can decide, retrying every failure with backoff (1s doubling
// to 30s) for as long as it takes: the API server unreachable, the Node not
// registered yet, the Node still carrying the cloud provider's
// "uninitialized" taint (its zone labels come with initialization), or no
// zone known while a zone pool needs one. Each reason is passed to waiting
// (nil once decided) for the readiness probe, and logged when it changes.
// Only ctx ending stops it.
func resolveLocation(ctx context.Context, opts Options, waiting func(error)) (topology.Location, kubernetes.Interface, error) {
	if opts.Kubeconfig == "" && !opts.InCluster {
		return topology.Location{Node: opts.NodeID, Zone: opts.Zone, Region: opts.Region}, nil, nil
	}
	config, err := kube.RestConfig(opts.Kubeconfig)
	if err != nil {
		return topology.Location{}, nil, err
	}
	config.Timeout = 10 * time.Second // one read; the loop retries
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return topology.Location{}, nil, fmt.Errorf("create API client: %w", err)
	}
	delay, maxDelay := opts.nodeRetryInitial, opts.nodeRetryMax
	if delay <= 0 {
		delay = defaultNodeRetryInitial
	}
	if maxDelay <= 0 {
		maxDelay = defaultNodeRetryMax
	}
	var lastReason string
	for attempt := 1; ; attempt++ {
		location, err := readLocation(ctx, client, opts)
		if err == nil {
			waiting(nil)
			return location, client, nil
		}
		if ctx.Err() != nil {
			return topology.Location{}, nil, ctx.Err()
		}
		waiting(err)
		if reason := err.Error(); reason != lastReason {
			klog.InfoS("Waiting for this node's topology before serving", "node", opts.NodeID,
				"reason", reason, "attempt", attempt, "retryIn", delay)
			lastReason = reason
		} else {
			klog.V(2).InfoS("Still waiting for this node's topology", "node", opts.NodeID,
				"reason", reason, "attempt", attempt, "retryIn", delay)
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return topology.Location{}, nil, ctx.Err()
		case <-timer.C:
		}
		delay = min(2*delay, maxDelay)
	}
}

// readLocation reads the Node once and decides its location, or says why
// it cannot decide yet.
func readLocation(ctx context.Context, client kubernetes.Interface, opts Options) (topology.Location, error) {
	node, err := client.CoreV1().Nodes().Get(ctx, opts.NodeID, metav1.GetOptions{})
	if err != nil {
		return topology.Location{}, fmt.Errorf("read Node %s: %w", opts.NodeID, err)
	}
	return locationOf(node, opts)
}

// locationOf decides a node's location from its Node object (a pure step):
// labels first, flags filling what the labels leave out.
func locationOf(node *corev1.Node, opts Options) (topology.Location, error) {
	for _, taint := range node.Spec.Taints {
		if taint.Key == uninitializedTaint {
			return topology.Location{}, fmt.Errorf("node %s is not initialized by its cloud provider yet (taint %s), so its zone labels may be missing", node.Name, uninitializedTaint)
		}
	}
	location := topology.LocationFromLabels(opts.NodeID, node.Labels)
	if location.Zone == "" {
		location.Zone = opts.Zone
	}
	if location.Region == "" {
		location.Region = opts.Region
	}
	if opts.ZoneDataDir != "" && location.Zone == "" {
		return topology.Location{}, fmt.Errorf("node %s has no %s label and no --zone is set, but the zone pool needs the node's zone", node.Name, topology.ZoneKey)
	}
	return location, nil
}

// startup tells the probes how far the driver has got: waiting for its
// location, then serving with its pools.
type startup struct {
	mu      sync.Mutex
	waiting error
	driver  *Driver
}

func (s *startup) setWaiting(err error) {
	s.mu.Lock()
	s.waiting = err
	s.mu.Unlock()
}

func (s *startup) setDriver(d *Driver) {
	s.mu.Lock()
	s.driver = d
	s.mu.Unlock()
}

// healthy is the liveness check: waiting is not a failure (a restart would
// only start the wait again), a lost pool is.
func (s *startup) healthy(ctx context.Context) error {
	s.mu.Lock()
	d := s.driver
	s.mu.Unlock()
	if d == nil {
		return nil
	}
	return d.poolsHealthy(ctx)
}

// ready is the readiness check: not ready until the driver serves.
func (s *startup) ready(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.driver != nil:
		return nil
	case s.waiting != nil:
		return fmt.Errorf("not serving yet: waiting for this node's topology: %w", s.waiting)
	}
	return errors.New("not serving yet: starting")
}
