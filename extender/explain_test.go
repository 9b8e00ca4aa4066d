package extender

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/toposnap/toposnap/internal/kube"
)

// TestExplainerTellsOncePerExplanation: an unschedulable pod whose volume
// fits no node gets one FailedScheduling event with the reason; syncing it
// again with nothing changed posts nothing; a replica not holding the Lease
// stays quiet; a pod the scheduler has not given up on is left alone.
func TestExplainerTellsOncePerExplanation(t *testing.T) {
	state := seed(class("topo-disk", driver, "zone", "cn-hangzhou-d"), claim("disk-pvc", "topo-disk", "20Gi"))
	pending := podWith("disk-pvc")
	pending.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable}}
	fresh := podWith("disk-pvc")
	fresh.Name = "fresh"
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, obj := range []*corev1.Pod{pending, fresh} {
		if err := pods.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range state.Nodes {
		if err := nodes.Add(n); err != nil {
			t.Fatal(err)
		}
	}
	recorder := record.NewFakeRecorder(10)
	e := &explainer{state: state, driver: driver, pods: corelisters.NewPodLister(pods), nodes: corelisters.NewNodeLister(nodes),
		recorder: recorder, told: map[string]string{}}
	events := func() []string {
		var got []string
		for len(recorder.Events) > 0 {
			got = append(got, <-recorder.Events)
		}
		return got
	}
	ctx := context.Background()
	for _, key := range []string{"default/app", "default/app", "default/fresh"} {
		if err := e.sync(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	got := events()
	want := "Warning FailedScheduling toposnap: 0/2 nodes can hold the pod's volumes: 2 node(s): pvc default/disk-pvc: class topo-disk allows zone cn-hangzhou-d"
	if len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Fatalf("events %q, want exactly one starting %q", got, want)
	}
	quiet := &explainer{state: state, driver: driver, pods: corelisters.NewPodLister(pods), nodes: corelisters.NewNodeLister(nodes),
		recorder: recorder, told: map[string]string{}, leader: &kube.Holder{}}
	if err := quiet.sync(ctx, "default/app"); err != nil {
		t.Fatal(err)
	}
	if got := events(); len(got) != 0 {
		t.Fatalf("a replica not holding the Lease posted %q", got)
	}
}
