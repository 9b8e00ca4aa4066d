// The differential test runs the in-tree VolumeBinding scheduler plugin
// (k8s.io/kubernetes/pkg/scheduler/framework/plugins/volumebinding, through
// its New, PreFilter and Filter, over a fake API server and synced informers)
// and toposnap's extender.Filter on the same random cluster states, and
// requires both to find the same nodes feasible. The in-tree plugin defines
// what Kubernetes means by "this pod's volumes fit this node": bound PVs'
// node affinity, matching static PVs (size, modes, volumeMode, selector,
// claimRef, phase, affinity), binding modes and allowedTopologies. Where the
// two differ, the extender is wrong.
//
// The states hold no CSIStorageCapacity and no CSIDriver objects and no
// claim has a dataSource or dataSourceRef: capacity and where a snapshot or
// source volume lives are toposnap's additions to the in-tree rules, checked
// by the extender's own tests. Without published capacity the extender's
// capacity check never rejects (FreeCapacity reports unknown), and without a
// CSIDriver that opts into storage capacity the in-tree plugin skips its own,
// so dynamic classes of toposnap's driver compare on topology alone.
//
// The benchmark (bench_test.go) times both on the extender benchmark's
// workload.
package intree

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

var (
	seed   = flag.Uint64("intree.seed", 20260401, "seed of the differential test's random states")
	states = flag.Int("intree.states", 1000, "number of random states the differential test compares")
	only   = flag.Int("intree.state", -1, "compare only this state index (to reproduce a failure)")
	show   = flag.Int("intree.show", 6, "how many disagreeing states to print in full, one per set of traits")
)

// minNonTrivial is the share of states that must have both feasible and
// infeasible nodes, so agreement cannot come from "everything fits" or
// "nothing fits" alone.
const minNonTrivial = 0.30

// quiet silences the scheduler's logging for a test.
func quiet(ctx context.Context) context.Context { return klog.NewContext(ctx, logr.Discard()) }

// stateOutcome is the comparison of one generated state.
type stateOutcome struct {
	index      int
	cluster    *cluster
	inTree     map[string]verdict
	mismatches []mismatch
	err        error
}

// compareState generates state index and runs both filters on it.
func compareState(ctx context.Context, index int) stateOutcome {
	c := newCluster(rand.New(rand.NewPCG(*seed, uint64(index))))
	out := stateOutcome{index: index, cluster: c}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	objects := c.objects()
	it, err := newInTree(ctx, c.Nodes, objects)
	if err != nil {
		out.err = err
		return out
	}
	names := c.nodeNames()
	out.inTree = it.filter(ctx, c.Pod)
	ours := oursVerdicts(memState(c.Nodes, objects), c.Pod, names)
	out.mismatches = compare(names, out.inTree, ours)
	return out
}

func TestFilterAgreesWithInTreeVolumeBinding(t *testing.T) {
	ctx := quiet(t.Context())
	first, last := 0, *states
	if *only >= 0 {
		first, last = *only, *only+1
	}
	outcomes := make([]stateOutcome, last-first)
	indexes := make(chan int)
	var wg sync.WaitGroup
	// Informer start-up is mostly waiting, so run more states than cores.
	for range 8 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range indexes {
				outcomes[i-first] = compareState(ctx, i)
			}
		})
	}
	for i := first; i < last; i++ {
		indexes <- i
	}
	close(indexes)
	wg.Wait()

	var nonTrivial, allFeasible, noneFeasible int
	failedByTrait, seenByTrait := map[string]int{}, map[string]int{}
	var failed []stateOutcome
	for _, o := range outcomes {
		if o.err != nil {
			t.Fatalf("seed %d state %d: %v", *seed, o.index, o.err)
		}
		feasible := 0
		for _, v := range o.inTree {
			if v.feasible {
				feasible++
			}
		}
		switch feasible {
		case 0:
			noneFeasible++
		case len(o.inTree):
			allFeasible++
		default:
			nonTrivial++
		}
		traits := o.cluster.Traits
		if len(traits) == 0 {
			traits = map[string]bool{"(no special trait)": true}
		}
		for trait := range traits {
			seenByTrait[trait]++
			if len(o.mismatches) > 0 {
				failedByTrait[trait]++
			}
		}
		if len(o.mismatches) > 0 {
			failed = append(failed, o)
		}
	}
	total := len(outcomes)
	t.Logf("seed %d: %d states; in-tree verdicts: %d non-trivial (some nodes feasible, some not), %d all feasible, %d none feasible",
		*seed, total, nonTrivial, allFeasible, noneFeasible)
	if *only < 0 && float64(nonTrivial) < minNonTrivial*float64(total) {
		t.Errorf("only %d of %d states are non-trivial; want at least %.0f%%: the generator no longer tests much", nonTrivial, total, 100*minNonTrivial)
	}
	if len(failed) == 0 {
		return
	}

	var summary strings.Builder
	fmt.Fprintf(&summary, "toposnap's filter disagrees with the in-tree VolumeBinding plugin on %d of %d states (seed %d).\n", len(failed), total, *seed)
	fmt.Fprintf(&summary, "States with disagreements, by trait (failed/seen); a trait present in every failure is the likely cause:\n")
	traits := make([]string, 0, len(seenByTrait))
	for trait := range seenByTrait {
		traits = append(traits, trait)
	}
	sort.Slice(traits, func(i, j int) bool { return failedByTrait[traits[i]] > failedByTrait[traits[j]] })
	for _, trait := range traits {
		fmt.Fprintf(&summary, "  %4d/%-4d %s\n", failedByTrait[trait], seenByTrait[trait], trait)
	}
	t.Error(summary.String())
	// The smallest failures first: they are the easiest to read.
	sort.SliceStable(failed, func(i, j int) bool { return len(failed[i].cluster.Traits) < len(failed[j].cluster.Traits) })
	bySignature := map[string][]int{}
	var signatures []string
	for _, o := range failed {
		signature := o.cluster.traits()
		if _, ok := bySignature[signature]; !ok {
			signatures = append(signatures, signature)
		}
		bySignature[signature] = append(bySignature[signature], o.index)
	}
	for i, o := range failed {
		signature := o.cluster.traits()
		if bySignature[signature][0] != o.index || i >= len(failed) || len(signatures) == 0 {
			continue
		}
		if *show == 0 {
			break
		}
		*show--
		m := o.mismatches[0]
		t.Errorf("seed %d state %d (rerun: go test -run %s -intree.state %d)\ntraits: %s (states with these traits: %v)\n%s\n%d of %d nodes differ\n%s",
			*seed, o.index, t.Name(), o.index, signature, bySignature[signature], m, len(o.mismatches), len(o.inTree), o.cluster.dump(m.node))
	}
}

// TestCompareDetectsDisagreement shows the comparison can fail: on a state
// where both filters agree, a flipped or missing verdict is reported.
func TestCompareDetectsDisagreement(t *testing.T) {
	ctx := quiet(t.Context())
	for i := range 50 {
		o := compareState(ctx, i)
		if o.err != nil {
			t.Fatal(o.err)
		}
		if len(o.mismatches) > 0 {
			continue
		}
		names := o.cluster.nodeNames()
		ours := oursVerdicts(memState(o.cluster.Nodes, o.cluster.objects()), o.cluster.Pod, names)
		flipped := map[string]verdict{}
		for name, v := range ours {
			flipped[name] = v
		}
		target := names[len(names)/2]
		flipped[target] = verdict{feasible: !ours[target].feasible, reason: "mutated"}
		if got := compare(names, o.inTree, flipped); len(got) != 1 || got[0].node != target {
			t.Fatalf("flipped verdict on %s: compare reported %v, want exactly that node", target, got)
		}
		delete(flipped, target)
		if got := compare(names, o.inTree, flipped); len(got) != 1 || got[0].node != target {
			t.Fatalf("missing verdict on %s: compare reported %v, want exactly that node", target, got)
		}
		return
	}
	t.Fatal("no agreeing state among the first 50 to mutate")
}
