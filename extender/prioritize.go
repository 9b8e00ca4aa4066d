package extender

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// MaxScore is the top of the extender score range kube-scheduler accepts.
const MaxScore = 10

// Placement policies, from the class parameter toposnap.io/placement.
const (
	placementParameter = "toposnap.io/placement"
	placementSpread    = "spread"
	placementBinpack   = "binpack"
)

// Prioritize scores nodes 0..10 for the pod's volumes: static PVs that fit
// with the least waste score highest; for claims to provision, the pool's
// free space counts up (spread, the default) or down (binpack). A pod with
// no claims scores 0 everywhere, leaving the choice to other scorers.
func Prioritize(state State, driver string, pod *corev1.Pod, nodeNames []string) extenderv1.HostPriorityList {
	index := state.snapshot()
	return prioritizeAt(state, index, driver, pod, index.nodes.resolve(nodeNames), nil).list()
}

// priorityAnswer is Prioritize's answer in compact form, which the server
// writes to the wire as it is.
type priorityAnswer struct {
	names   []string
	parts   []scoreParts // by name; all zero when nothing is scored
	maxFree int64
}

func (a *priorityAnswer) list() extenderv1.HostPriorityList {
	scores := make(extenderv1.HostPriorityList, len(a.names))
	for i, name := range a.names {
		scores[i] = extenderv1.HostPriority{Host: name, Score: a.parts[i].score(a.maxFree)}
	}
	return scores
}

// prioritizeAt scores over index for nodes already looked up in its table;
// parts is reused when it has room.
func prioritizeAt(state State, index *indexSnapshot, driver string, pod *corev1.Pod, nodes nodeRefs, parts []scoreParts) *priorityAnswer {
	answer := &priorityAnswer{names: nodes.names, parts: slices.Grow(parts[:0], len(nodes.names))[:len(nodes.names)]}
	clear(answer.parts)
	if pod == nil {
		return answer
	}
	if loading, _ := state.readiness(); loading != "" {
		return answer // nothing known yet: scores 0, the choice left to other scorers
	}
	claims, problem := resolveClaims(state, index, pod)
	if problem != "" || len(claims) == 0 {
		return answer
	}
	// One pass over the nodes gathers all but the free-space shares, which
	// need the largest free space of all; score() does the arithmetic. The
	// scheduler asks about one pod at a time, so a large request shares its
	// nodes out to the cores in chunks: scoring only reads the claims and
	// the index. The request's own goroutine takes chunks too, so a core
	// busy with something else delays nothing: the others take its share.
	n := len(nodes.nodes)
	if n < parallelFrom || runtime.GOMAXPROCS(0) < 2 {
		answer.maxFree = scoreChunk(driver, claims, nodes.nodes, answer.parts)
		return answer
	}
	chunks := (n + chunkSize - 1) / chunkSize
	maxFree := make([]int64, min(runtime.GOMAXPROCS(0), chunks))
	var next atomic.Int64
	var failed atomic.Pointer[workerPanic]
	work := func(w int) {
		// A panic on a worker's goroutine would end the process: it is
		// kept, and raised again on the request's goroutine once every
		// worker is done with the request's buffers.
		defer func() {
			if r := recover(); r != nil {
				failed.CompareAndSwap(nil, &workerPanic{value: r, stack: debug.Stack()})
			}
		}()
		for c := int(next.Add(1) - 1); c < chunks; c = int(next.Add(1) - 1) {
			lo, hi := c*chunkSize, min((c+1)*chunkSize, n)
			maxFree[w] = max(maxFree[w], scoreChunk(driver, claims, nodes.nodes[lo:hi], answer.parts[lo:hi]))
		}
	}
	var wg sync.WaitGroup
	for w := 1; w < len(maxFree); w++ {
		wg.Go(func() { work(w) })
	}
	work(0)
	wg.Wait()
	if p := failed.Load(); p != nil {
		panic(p)
	}
	answer.maxFree = slices.Max(maxFree)
	return answer
}

// workerPanic is a panic recovered on a prioritize worker, with the
// worker's stack, raised again on the request's goroutine.
type workerPanic struct {
	value any
	stack []byte
}

func (p *workerPanic) Error() string { return fmt.Sprintf("prioritize worker panicked: %v", p.value) }

// scoreChunk scores a chunk of nodes: scoreNodes, replaced by tests that
// need a worker to panic.
var scoreChunk = scoreNodes

// Requests of parallelFrom nodes or more are scored in chunks of chunkSize
// on every core.
const (
	parallelFrom = 1000
	chunkSize    = 256
)

// scoreNodes fills parts for nodes and returns the largest free space seen.
func scoreNodes(driver string, claims []podClaim, nodes []tableNode, parts []scoreParts) int64 {
	var maxFree int64
	probe := &corev1.Node{} // reused: the node under scoring, labels only
	for i, at := range nodes {
		if at.node == nil {
			continue
		}
		probe.Labels = at.labels
		parts[i] = scoreNode(driver, claims, at, probe)
		maxFree = max(maxFree, parts[i].free)
	}
	return maxFree
}

// scoreParts is what one node's score is made of.
type scoreParts struct {
	free    int64 // the pool's free space, of the first claim to provision that has one
	static  int64 // summed fit scores of claims matched to static PVs
	counted int64 // claims scored
	spread  int64 // claims scored by free space, more is better
	binpack int64 // claims scored by free space, less is better
}

// score averages per-claim scores: a claim to provision scores its pool's
// free space as a share of the largest.
func (p scoreParts) score(maxFree int64) int64 {
	if p.counted == 0 {
		return 0
	}
	total := p.static
	if maxFree > 0 {
		share := p.free * MaxScore / maxFree
		total += p.spread*share + p.binpack*(MaxScore-share)
	}
	return min(max(total/p.counted, 0), MaxScore)
}

// scoreNode gathers one node's score parts.
func scoreNode(driver string, claims []podClaim, at tableNode, probe *corev1.Node) scoreParts {
	var parts scoreParts
	freeFound := false
	var excludedBuf [4]string
	excluded := excludedBuf[:0]
	for i := range claims {
		pc := &claims[i]
		if pc.pv != nil || pc.class == nil {
			continue
		}
		if !freeFound && pc.class.Provisioner == driver {
			free := pc.joined.freeAt(at.index)
			parts.free, freeFound = free.bytes, free.known
		}
		parts.counted++
		// A claim being provisioned, or never matchable, has no static PV to score.
		if !pc.promised && pc.selectorErr == nil {
			if match := matchStatic(pc, pc.joined.staticAt(at.index), probe, excluded); match != nil {
				excluded = append(excluded, match.name)
				parts.static += fitScore(pc.request, match.size)
				continue
			}
		}
		switch {
		case pc.class.Provisioner != driver:
		case pc.binpack:
			parts.binpack++
		default:
			parts.spread++
		}
	}
	return parts
}

// fitScore is 10 for a PV exactly the claim's size, less the more it wastes.
func fitScore(request, size resource.Quantity) int64 {
	if size.Value() <= 0 {
		return 0
	}
	waste := size.Value() - request.Value()
	return MaxScore - waste*MaxScore/size.Value()
}
