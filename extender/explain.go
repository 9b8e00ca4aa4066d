package extender

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/toposnap/toposnap/internal/kube"
)

// ReasonFailedScheduling is the reason of the events the explainer posts:
// the one `kubectl describe pod` users already read for Pending pods.
const ReasonFailedScheduling = "FailedScheduling"

// explainer tells a pod the scheduler could not place why its volumes fit
// nowhere, in the extender's words. kube-scheduler only asks extenders about
// nodes its own filters passed, so when its VolumeBinding plugin rejects
// every node (a class allowing a zone with no nodes, say) the pod's events
// carry only "didn't find available persistent volumes to bind". The
// explainer runs the same Filter over every node for such pods and posts
// one FailedScheduling event with the reasons, grouped.
type explainer struct {
	state    State
	driver   string
	pods     corelisters.PodLister
	nodes    corelisters.NodeLister
	recorder record.EventRecorder
	queue    workqueue.TypedRateLimitingInterface[string]
	mu       sync.Mutex
	told     map[string]string // pod key -> the last explanation posted
	leader   *kube.Holder      // nil: no leader election, always explain
}

// unschedulable reports whether the scheduler has given up on the pod for
// now (condition PodScheduled False, reason Unschedulable).
func unschedulable(pod *corev1.Pod) bool {
	if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
		}
	}
	return false
}

func hasClaims(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil || v.Ephemeral != nil {
			return true
		}
	}
	return false
}

func (e *explainer) enqueue(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || !unschedulable(pod) || !hasClaims(pod) {
		return
	}
	if key, err := cache.MetaNamespaceKeyFunc(pod); err == nil {
		e.queue.Add(key)
	}
}

func (e *explainer) enqueueAll() {
	pods, err := e.pods.List(labels.Everything())
	if err != nil {
		klog.ErrorS(err, "List pending pods")
		return
	}
	for _, pod := range pods {
		e.enqueue(pod)
	}
}

func (e *explainer) forget(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		e.mu.Lock()
		delete(e.told, key)
		e.mu.Unlock()
	}
}

// sync explains one pod, once per distinct explanation.
func (e *explainer) sync(_ context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := e.pods.Pods(namespace).Get(name)
	if err != nil || !unschedulable(pod) || (e.leader != nil && !e.leader.Holds()) {
		return nil
	}
	nodes, err := e.nodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	message := Explain(Filter(e.state, e.driver, pod, names), len(names))
	if message == "" {
		return nil
	}
	e.mu.Lock()
	repeated := e.told[key] == message
	e.told[key] = message
	e.mu.Unlock()
	if !repeated {
		e.recorder.Event(pod, corev1.EventTypeWarning, ReasonFailedScheduling, message)
		klog.V(2).InfoS("Explained why a pod's volumes fit no node", "pod", klog.KObj(pod), "message", message)
	}
	return nil
}

// Explain words a filter result in which no node fits as one message,
// grouping nodes by reason like the scheduler does: "toposnap: 0/3 nodes
// can hold the pod's volumes: 3 node(s): pvc default/x: class c allows zone
// d; node is in zone b." Empty when some node fits.
func Explain(result extenderv1.ExtenderFilterResult, nodes int) string {
	if result.NodeNames != nil && len(*result.NodeNames) > 0 {
		return ""
	}
	counts := map[string]int{}
	for _, reasons := range []map[string]string{result.FailedAndUnresolvableNodes, result.FailedNodes} {
		for _, reason := range reasons {
			counts[reason]++
		}
	}
	if len(counts) == 0 {
		return ""
	}
	reasons := make([]string, 0, len(counts))
	for reason := range counts {
		reasons = append(reasons, reason)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if counts[reasons[i]] != counts[reasons[j]] {
			return counts[reasons[i]] > counts[reasons[j]]
		}
		return reasons[i] < reasons[j]
	})
	parts := make([]string, 0, len(reasons))
	for _, reason := range reasons {
		parts = append(parts, fmt.Sprintf("%d node(s): %s", counts[reason], reason))
	}
	return fmt.Sprintf("toposnap: 0/%d nodes can hold the pod's volumes: %s.", nodes, strings.Join(parts, "; "))
}

// run works the queue until ctx ends.
func (e *explainer) run(ctx context.Context) {
	defer e.queue.ShutDown()
	go kube.Work(ctx, e.queue, e.sync)
	<-ctx.Done()
}
