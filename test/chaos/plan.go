package chaos

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// FaultKind names a kind of fault.
type FaultKind string

const (
	// FaultKill SIGKILLs one toposnap process and starts it again after Hold.
	FaultKill FaultKind = "kill"
	// FaultAPIServerRestart SIGKILLs kube-apiserver and starts it again.
	FaultAPIServerRestart FaultKind = "apiserver-restart"
	// FaultEtcdPause freezes etcd (SIGSTOP) for Hold, then thaws it.
	FaultEtcdPause FaultKind = "etcd-pause"
)

// Target is one toposnap process: a component on a node (a worker, or the
// harness's control-plane pseudo-node for the extender and the webhook).
type Target struct{ Node, Component string }

func (t Target) String() string { return t.Node + "/" + t.Component }

// Fault is one planned fault, At after the window opens.
type Fault struct {
	At     time.Duration
	Kind   FaultKind
	Target Target // FaultKill only
	Hold   time.Duration
}

func (f Fault) String() string {
	switch f.Kind {
	case FaultKill:
		return fmt.Sprintf("+%v kill %s (down %v)", f.At.Round(time.Millisecond), f.Target, f.Hold.Round(time.Millisecond))
	case FaultEtcdPause:
		return fmt.Sprintf("+%v pause etcd for %v", f.At.Round(time.Millisecond), f.Hold.Round(time.Millisecond))
	}
	return fmt.Sprintf("+%v %s", f.At.Round(time.Millisecond), f.Kind)
}

// PlanFaults draws the faults of one window from the seed: gaps uniform in
// [FaultGapMin, FaultGapMax); 70% kills of a uniformly chosen target (down
// 0.2–2 s), 15% API server restarts, 15% etcd pauses (1–5 s).
func PlanFaults(seed uint64, p Profile, targets []Target) []Fault {
	random := rand.New(rand.NewPCG(seed, 0xfa017))
	sorted := append([]Target(nil), targets...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].String() < sorted[j].String() })
	var faults []Fault
	for at := between(random, p.FaultGapMin, p.FaultGapMax); at < p.Window; at += between(random, p.FaultGapMin, p.FaultGapMax) {
		roll := random.IntN(100)
		switch {
		case roll < 70 && len(sorted) > 0:
			faults = append(faults, Fault{At: at, Kind: FaultKill, Target: sorted[random.IntN(len(sorted))],
				Hold: between(random, 200*time.Millisecond, 2*time.Second)})
		case roll < 85:
			faults = append(faults, Fault{At: at, Kind: FaultAPIServerRestart})
		default:
			faults = append(faults, Fault{At: at, Kind: FaultEtcdPause, Hold: between(random, time.Second, 5*time.Second)})
		}
	}
	return faults
}

// between draws uniformly from [low, high).
func between(random *rand.Rand, low, high time.Duration) time.Duration {
	if high <= low {
		return low
	}
	return low + time.Duration(random.Int64N(int64(high-low)))
}

// OpKind names a kind of operation of the workload.
type OpKind string

const (
	// OpClaim creates a claim (and, unless its class binds immediately, a
	// pod using it); final state: Bound, pod scheduled.
	OpClaim OpKind = "claim"
	// OpDeletedClaim creates a claim and its pod and deletes both Delay
	// later; final state: claim and PV gone.
	OpDeletedClaim OpKind = "deleted-claim"
	// OpSnapshot snapshots a source; final state: ready.
	OpSnapshot OpKind = "snapshot"
	// OpDeletedSnapshot snapshots a source and deletes the snapshot Delay
	// later; final state: snapshot and content gone.
	OpDeletedSnapshot OpKind = "deleted-snapshot"
	// OpRestore restores a kept snapshot into a claim used by a pod; final
	// state: Bound, pod scheduled, data as the source's at the cut.
	OpRestore OpKind = "restore"
	// OpDeletedSource deletes a source's pod and claim once its kept
	// snapshot is ready; final state: claim and PV gone.
	OpDeletedSource OpKind = "deleted-source"
	// OpDeletedPV deletes the bound PV of a source in use; final state: the
	// PV terminating but kept for its claim, its data intact.
	OpDeletedPV OpKind = "deleted-pv"
)

// Op is one planned operation, started At after the window opens.
type Op struct {
	At   time.Duration
	Kind OpKind
	// Name of the claim or snapshot it creates or acts on.
	Name string
	// Class of a claim it creates (a restore's is its source's).
	Class string
	// Source is the index of the source a snapshot, restore or source
	// delete is about.
	Source int
	// Snapshot a restore restores.
	Snapshot string
	// Delay before a deleted-claim or deleted-snapshot is deleted.
	Delay time.Duration
}

// Classes the campaign creates.
const (
	ClassNode          = "chaos-node"           // node scope, WaitForFirstConsumer
	ClassZone          = "chaos-zone"           // zone scope, WaitForFirstConsumer, any zone
	ClassZoneImmediate = "chaos-zone-immediate" // zone scope, Immediate, any zone
	SnapshotClass      = "chaos-snapshots"
)

// SourceName and SourceClass name source i and its class (node and zone
// scope alternate).
func SourceName(i int) string { return fmt.Sprintf("source-%d", i) }

// SourceClass is source i's class.
func SourceClass(i int) string { return []string{ClassNode, ClassZone}[i%2] }

// KeptSnapshot names the snapshot of source i that must become ready.
func KeptSnapshot(i int) string { return fmt.Sprintf("snap-%d", i) }

// PlanWorkload draws the operations of one campaign from the seed. Every
// snapshot and restore is about a source made before the window; a restore
// starts after the snapshot it restores, a source delete after its
// snapshot; sources whose PV is deleted and sources that are deleted are
// distinct.
func PlanWorkload(seed uint64, p Profile, w Workload) []Op {
	random := rand.New(rand.NewPCG(seed, 0x304d))
	issue := time.Duration(float64(p.Window) * p.IssueFraction)
	at := func() time.Duration { return between(random, 0, issue) }
	var ops []Op
	claimClasses := []string{ClassNode, ClassZone, ClassZoneImmediate}
	for i := range w.Claims {
		ops = append(ops, Op{At: at(), Kind: OpClaim, Name: fmt.Sprintf("claim-%d", i), Class: claimClasses[random.IntN(len(claimClasses))]})
	}
	for i := range w.DeletedClaims {
		ops = append(ops, Op{At: at(), Kind: OpDeletedClaim, Name: fmt.Sprintf("doomed-claim-%d", i),
			Class: claimClasses[random.IntN(len(claimClasses))], Delay: between(random, 0, 3*time.Second)})
	}
	snapshotAt := map[int]time.Duration{}
	kept := min(w.Snapshots, w.Sources)
	for i := range kept {
		snapshotAt[i] = at()
		ops = append(ops, Op{At: snapshotAt[i], Kind: OpSnapshot, Name: KeptSnapshot(i), Source: i})
	}
	for i := range w.DeletedSnapshots {
		ops = append(ops, Op{At: at(), Kind: OpDeletedSnapshot, Name: fmt.Sprintf("doomed-snap-%d", i),
			Source: random.IntN(w.Sources), Delay: between(random, 0, 3*time.Second)})
	}
	if kept > 0 {
		for i := range w.Restores {
			source := i % kept
			start := snapshotAt[source] + between(random, 0, issue-snapshotAt[source]+time.Millisecond)
			ops = append(ops, Op{At: start, Kind: OpRestore, Name: fmt.Sprintf("restore-%d", i), Class: SourceClass(source),
				Source: source, Snapshot: KeptSnapshot(source)})
		}
	}
	victims := random.Perm(kept)
	for i := range min(w.DeletedSources, len(victims)) {
		source := victims[i]
		ops = append(ops, Op{At: snapshotAt[source], Kind: OpDeletedSource, Name: SourceName(source), Source: source})
	}
	for i := w.DeletedSources; i < min(w.DeletedSources+w.DeletedPVs, len(victims)); i++ {
		ops = append(ops, Op{At: at(), Kind: OpDeletedPV, Name: SourceName(victims[i]), Source: victims[i]})
	}
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].At < ops[j].At })
	return ops
}
