package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
)

// TestNodeAgentsHoldOnlyTheirOwn: with toposnap-controller routing, a
// node's provisioner and snapshotter cache the claims and PVs routed to
// their node and their own Node, not the cluster's: a claim made on node2
// never reaches node1's caches, a zone claim never reaches node1's node
// caches (the zone's objects are watched apart, by the zone Lease's holder
// while it holds it), and every claim and PV of the driver carries the
// route of the node that holds its volume.
func TestNodeAgentsHoldOnlyTheirOwn(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	createClass(t, "e2e-node", "node")
	createClass(t, "e2e-zone", "zone", cluster.SeedZone)
	for _, node := range []string{"node1", "node2"} {
		createClaim(t, ns, "on-"+node, "e2e-node", "64Mi", nil)
		createPodIn(t, ns, "app-"+node, "on-"+node, map[string]string{topology.HostnameKey: node})
	}
	createClaim(t, ns, "in-zone", "e2e-zone", "64Mi", nil)
	createPodIn(t, ns, "app-zone", "in-zone", map[string]string{topology.HostnameKey: "node1"})
	waitBound(t, ns, "in-zone", "app-zone")
	for _, node := range []string{"node1", "node2"} {
		pv, got := waitBound(t, ns, "on-"+node, "app-"+node)
		if got != node {
			t.Fatalf("pod on %s, want %s", got, node)
		}
		ctx := ctxFor(t, time.Minute)
		if err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
			claim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "on-"+node, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			live, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return route.Of(claim.Labels) == route.Node(node) && route.Of(live.Labels) == route.Node(node), nil
		}); err != nil {
			t.Fatalf("claim on-%s and its PV are not routed to %s: %v", node, route.Node(node), err)
		}
	}

	// What node1's agents may hold: the driver's claims and PVs routed to
	// node1 or to its zone, read live; its caches must hold exactly as many.
	node1, err := env.Cluster.Client.CoreV1().Nodes().Get(ctxFor(t, time.Minute), "node1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	location := topology.LocationFromLabels("node1", node1.Labels)
	zone := route.ZoneOf(location.Region, location.Zone)
	own := route.Selector("node1", "").String()
	selectors := map[string]string{"provisioner": own, "snapshotter": own}
	if err := poll(ctxFor(t, time.Minute), 200*time.Millisecond, time.Minute, func() (bool, error) {
		ctx := ctxFor(t, 10*time.Second)
		all, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, component := range []string{"provisioner", "snapshotter"} {
			claims, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{LabelSelector: selectors[component]})
			if err != nil {
				return false, err
			}
			if len(all.Items) <= len(claims.Items) {
				return false, fmt.Errorf("every one of the cluster's %d claims is routed to what node1's %s watches: the test shows nothing", len(all.Items), component)
			}
			cached, err := cachedObjects(ctx, component, "persistentvolumeclaims")
			if err != nil || cached != len(claims.Items) {
				t.Logf("node1's %s caches %d claims, %d are routed to it (of %d): %v", component, cached, len(claims.Items), len(all.Items), err)
				return false, nil
			}
		}
		nodes, err := cachedObjects(ctx, "snapshotter", "nodes")
		return err == nil && nodes == 1, nil
	}); err != nil {
		t.Fatalf("node1's caches do not hold exactly what is routed to it: %v", err)
	}
	zoneClaim, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctxFor(t, time.Minute), "in-zone", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if route.Of(zoneClaim.Labels) != route.Zone(zone) {
		t.Fatalf("zone claim routed to %q, want %q: the test shows nothing", route.Of(zoneClaim.Labels), route.Zone(zone))
	}
	for _, claim := range []string{"on-node2"} {
		live, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctxFor(t, time.Minute), claim, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if route.Of(live.Labels) == route.Node("node1") || live.Status.Phase != corev1.ClaimBound {
			t.Fatalf("claim %s routed to %q, phase %s", claim, route.Of(live.Labels), live.Status.Phase)
		}
	}
}

// cachedObjects reads how many objects of resource node1's component caches.
func cachedObjects(ctx context.Context, component, resource string) (int, error) {
	value, err := env.Nodes["node1"].Metric(ctx, component, fmt.Sprintf("toposnap_%s_cached_objects{resource=%q}", component, resource))
	return int(value), err
}
