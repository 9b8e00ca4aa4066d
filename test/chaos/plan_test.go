package chaos

import (
	"reflect"
	"testing"
	"time"
)

var targets = []Target{{"node1", "driver"}, {"node1", "provisioner"}, {"node2", "snapshotter"}, {"control-plane", "extender"}}

func TestPlansAreAFunctionOfTheSeed(t *testing.T) {
	w := WorkloadFor(Short)
	if !reflect.DeepEqual(PlanFaults(7, Short, targets), PlanFaults(7, Short, targets)) {
		t.Error("two fault plans of seed 7 differ")
	}
	if reflect.DeepEqual(PlanFaults(7, Short, targets), PlanFaults(8, Short, targets)) {
		t.Error("seeds 7 and 8 plan the same faults")
	}
	if !reflect.DeepEqual(PlanWorkload(7, Short, w), PlanWorkload(7, Short, w)) {
		t.Error("two workload plans of seed 7 differ")
	}
	if reflect.DeepEqual(PlanWorkload(7, Short, w), PlanWorkload(8, Short, w)) {
		t.Error("seeds 7 and 8 plan the same workload")
	}
	shuffled := []Target{targets[3], targets[1], targets[0], targets[2]}
	if !reflect.DeepEqual(PlanFaults(7, Short, targets), PlanFaults(7, Short, shuffled)) {
		t.Error("the order targets are listed in changes the plan")
	}
}

func TestFaultPlan(t *testing.T) {
	for _, p := range []Profile{Short, Full} {
		t.Run(p.Name, func(t *testing.T) {
			kinds := map[FaultKind]int{}
			for seed := uint64(1); seed <= 20; seed++ {
				previous := time.Duration(0)
				for _, f := range PlanFaults(seed, p, targets) {
					kinds[f.Kind]++
					if f.At < previous+p.FaultGapMin || f.At >= p.Window {
						t.Fatalf("seed %d: fault %v outside the window or closer than %v to the previous one", seed, f, p.FaultGapMin)
					}
					previous = f.At
					if f.Kind == FaultKill && f.Target == (Target{}) {
						t.Fatalf("seed %d: kill without a target", seed)
					}
				}
			}
			for _, kind := range []FaultKind{FaultKill, FaultAPIServerRestart, FaultEtcdPause} {
				if kinds[kind] == 0 {
					t.Errorf("20 seeds never plan a %s", kind)
				}
			}
		})
	}
}

func TestWorkloadPlan(t *testing.T) {
	for _, p := range []Profile{Short, Full} {
		t.Run(p.Name, func(t *testing.T) {
			w := WorkloadFor(p)
			if w.Claims < 50 || w.Snapshots < 20 || w.Restores < 20 || w.DeletedClaims+w.DeletedSnapshots+w.DeletedSources+w.DeletedPVs < 20 {
				t.Fatalf("workload %+v is below issue 10's 50 claims, 20 snapshots, 20 restores and deletes", w)
			}
			for seed := uint64(1); seed <= 20; seed++ {
				ops := PlanWorkload(seed, p, w)
				counts := map[OpKind]int{}
				snapshotAt := map[string]time.Duration{}
				deleted := map[int]OpKind{}
				for _, op := range ops {
					counts[op.Kind]++
					if op.At < 0 || op.At > time.Duration(float64(p.Window)*p.IssueFraction) {
						t.Fatalf("seed %d: %+v starts outside the issue period", seed, op)
					}
					if op.Kind == OpSnapshot {
						snapshotAt[op.Name] = op.At
					}
					if op.Kind == OpDeletedSource || op.Kind == OpDeletedPV {
						if other, ok := deleted[op.Source]; ok {
							t.Fatalf("seed %d: source %d is both %s and %s", seed, op.Source, other, op.Kind)
						}
						deleted[op.Source] = op.Kind
					}
				}
				for _, op := range ops {
					switch op.Kind {
					case OpRestore:
						at, ok := snapshotAt[op.Snapshot]
						if !ok || op.At < at || op.Snapshot != KeptSnapshot(op.Source) || op.Class != SourceClass(op.Source) {
							t.Fatalf("seed %d: restore %+v does not follow its kept snapshot (at %v, planned %v)", seed, op, at, ok)
						}
					case OpDeletedSource:
						if op.At < snapshotAt[KeptSnapshot(op.Source)] {
							t.Fatalf("seed %d: source %d deleted before its snapshot is even created", seed, op.Source)
						}
					}
				}
				want := map[OpKind]int{OpClaim: w.Claims, OpDeletedClaim: w.DeletedClaims, OpSnapshot: w.Snapshots,
					OpDeletedSnapshot: w.DeletedSnapshots, OpRestore: w.Restores, OpDeletedSource: w.DeletedSources, OpDeletedPV: w.DeletedPVs}
				if !reflect.DeepEqual(counts, want) {
					t.Fatalf("seed %d: operation counts %v, want %v", seed, counts, want)
				}
			}
		})
	}
}
