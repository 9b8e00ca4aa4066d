package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// Report is the outcome of one campaign.
type Report struct {
	Seed    uint64
	Profile string
	// Faults are the faults injected, in order.
	Faults []string
	// Exits are toposnap processes that exited on their own during the
	// campaign (the node controllers exit when they lose their driver, as
	// upstream sidecars do) and were restarted as the kubelet would.
	Exits []string
	// FaultCounts and Operations count faults by kind and issued operations
	// by kind.
	FaultCounts map[FaultKind]int
	Operations  map[OpKind]int
	// Violations: operations that could not be issued, faults that could
	// not be undone, objects not in their final state within the bound,
	// broken invariants.
	Violations []string
	// Phases' durations: set-up, fault window, reaching the final state,
	// invariants.
	Setup, Chaos, Final, Invariants time.Duration
}

// Summary is the report's one-line summary.
func (r *Report) Summary() string {
	faults, operations := 0, 0
	for _, n := range r.FaultCounts {
		faults += n
	}
	for _, n := range r.Operations {
		operations += n
	}
	return fmt.Sprintf("chaos seed=%d profile=%s faults=%d (%s) operations=%d (%s) violations=%d setup=%v chaos=%v final=%v invariants=%v",
		r.Seed, r.Profile, faults, countsString(r.FaultCounts), operations, countsString(r.Operations), len(r.Violations),
		r.Setup.Round(time.Second), r.Chaos.Round(time.Second), r.Final.Round(time.Second), r.Invariants.Round(time.Second))
}

// String is the whole report: summary, faults, violations.
func (r *Report) String() string {
	var b strings.Builder
	b.WriteString(r.Summary() + "\n\nfaults:\n")
	for _, f := range r.Faults {
		b.WriteString("  " + f + "\n")
	}
	b.WriteString("\nprocesses that exited on their own (restarted):\n")
	for _, x := range r.Exits {
		b.WriteString("  " + x + "\n")
	}
	b.WriteString("\nviolations:\n")
	if len(r.Violations) == 0 {
		b.WriteString("  none\n")
	}
	for _, v := range r.Violations {
		b.WriteString("  " + v + "\n")
	}
	return b.String()
}

// WriteFile writes the report to path, creating its directory.
func (r *Report) WriteFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(r.String()), 0o644)
}

// countsString renders counts as "a=1 b=2", keys sorted.
func countsString[K ~string](counts map[K]int) string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, counts[K(k)])
	}
	return strings.Join(parts, " ")
}

// Run plays one campaign on env: set-up without faults (classes, written
// sources), then the workload under the seed's faults, then waits for every
// object's final state and for the invariants. It returns an error only
// when the set-up fails; everything else is in the report.
func Run(ctx context.Context, env *harness.Env, seed uint64, p Profile) (*Report, error) {
	report := &Report{Seed: seed, Profile: p.Name, FaultCounts: map[FaultKind]int{}, Operations: map[OpKind]int{}}
	begin := time.Now()
	ns := fmt.Sprintf("chaos-%d", seed)
	w := newWorkload(env, ns)
	plan := WorkloadFor(p)
	if err := setUp(ctx, w, seed, plan.Sources); err != nil {
		return nil, fmt.Errorf("chaos set-up: %w", err)
	}
	checker := env.NewChecker(harness.CheckOptions{})
	if before := checker.Settle(ctx, p.InvariantBound); len(before.Violations) > 0 {
		for _, v := range before.Violations {
			report.Violations = append(report.Violations, "before any fault: "+v)
		}
	}
	report.Setup = time.Since(begin)

	faults := PlanFaults(seed, p, Targets(env))
	ops := PlanWorkload(seed, p, plan)
	klog.InfoS("Chaos window opens", "seed", seed, "profile", p.Name, "faults", len(faults), "operations", len(ops), "window", p.Window)
	windowStart := time.Now()
	var injectedFaults []injected
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		injectedFaults = inject(ctx, env, windowStart, faults)
	}()
	var running sync.WaitGroup
	for _, op := range ops {
		running.Add(1)
		go func() {
			defer running.Done()
			w.run(ctx, windowStart, op)
		}()
	}
	<-faultsDone
	for _, err := range recoverAll(ctx, env) {
		report.Violations = append(report.Violations, "recovering from the faults: "+err.Error())
	}
	report.Chaos = time.Since(windowStart)
	for _, f := range injectedFaults {
		report.FaultCounts[f.Kind]++
		line := f.String()
		if f.Late > time.Second {
			line += fmt.Sprintf(" (ran %v late)", f.Late.Round(time.Millisecond))
		}
		if f.Err != nil {
			line += " FAILED: " + f.Err.Error()
			report.Violations = append(report.Violations, "fault "+f.String()+" could not be undone: "+f.Err.Error())
		}
		report.Faults = append(report.Faults, line)
	}
	running.Wait() // operations still retrying after the window finish or give up within opDeadline

	finalStart := time.Now()
	report.Violations = append(report.Violations, w.failed...)
	for kind, n := range w.issued {
		report.Operations[kind] = n
	}
	report.Violations = append(report.Violations, waitFinal(ctx, w, ops, p.FinalBound)...)
	report.Final = time.Since(finalStart)

	invariantStart := time.Now()
	report.Violations = append(report.Violations, checker.Settle(ctx, p.InvariantBound).Violations...)
	report.Invariants = time.Since(invariantStart)
	for _, exit := range env.Exits() {
		if !exit.At.Before(windowStart) {
			report.Exits = append(report.Exits, exit.String())
		}
	}
	return report, nil
}

// waitFinal polls until every operation's objects are in their final state,
// or bound passes; it returns what is not.
func waitFinal(ctx context.Context, w *workload, ops []Op, bound time.Duration) []string {
	var problems []string
	err := cluster.Poll(ctx, time.Second, bound, func() (bool, error) {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		o, err := w.observe(callCtx)
		if err != nil {
			problems = []string{fmt.Sprintf("cannot observe namespace %s: %v", w.ns, err)}
			return false, nil
		}
		problems = problems[:0]
		for _, op := range ops {
			if problem := w.notFinal(o, op); problem != "" {
				problems = append(problems, problem)
			}
		}
		return len(problems) == 0, nil
	})
	if err == nil {
		return nil
	}
	out := make([]string, len(problems))
	for i, p := range problems {
		out[i] = fmt.Sprintf("not final %v after the faults: %s", bound, p)
	}
	return out
}

// setUp creates the namespace, the classes and the written sources.
func setUp(ctx context.Context, w *workload, seed uint64, sources int) error {
	client := w.env.Cluster.Client
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.ns}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", w.ns, err)
	}
	// The default service account must exist before pods can be created.
	if err := retry(ctx, "default service account of "+w.ns, func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts(w.ns).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	wait := storagev1.VolumeBindingWaitForFirstConsumer
	immediate := storagev1.VolumeBindingImmediate
	classes := []*storagev1.StorageClass{
		{ObjectMeta: metav1.ObjectMeta{Name: ClassNode}, Parameters: map[string]string{"scope": "node"}, VolumeBindingMode: &wait},
		{ObjectMeta: metav1.ObjectMeta{Name: ClassZone}, Parameters: map[string]string{"scope": "zone"}, VolumeBindingMode: &wait},
		// Immediate zone claims with no allowedTopologies: every zone's
		// Lease holder sees them, exactly one may provision each.
		{ObjectMeta: metav1.ObjectMeta{Name: ClassZoneImmediate, Annotations: map[string]string{"toposnap.io/allow-immediate": "true"}},
			Parameters: map[string]string{"scope": "zone"}, VolumeBindingMode: &immediate},
	}
	for _, class := range classes {
		class.Provisioner = harness.DriverName
		if _, err := client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create StorageClass %s: %w", class.Name, err)
		}
	}
	snapshotClass := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: SnapshotClass},
		Driver: harness.DriverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := w.env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, snapshotClass, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create VolumeSnapshotClass: %w", err)
	}
	for i := range sources {
		if err := w.createClaim(ctx, SourceName(i), SourceClass(i), nil); err != nil {
			return err
		}
		if err := w.createPod(ctx, SourceName(i)+"-pod", SourceName(i)); err != nil {
			return err
		}
	}
	w.sources = make([]source, sources)
	if err := cluster.Poll(ctx, 500*time.Millisecond, 3*time.Minute, func() (bool, error) {
		o, err := w.observe(ctx)
		if err != nil {
			return false, nil
		}
		for i := range sources {
			claim, pod := o.claims[SourceName(i)], o.pods[SourceName(i)+"-pod"]
			if claim == nil || claim.Status.Phase != corev1.ClaimBound || pod == nil || pod.Spec.NodeName == "" || o.pvs[claim.Spec.VolumeName] == nil {
				return false, nil
			}
			w.sources[i] = source{claim: SourceName(i), pod: SourceName(i) + "-pod", node: pod.Spec.NodeName,
				pv: claim.Spec.VolumeName, volume: o.pvs[claim.Spec.VolumeName].Spec.CSI.VolumeHandle}
		}
		return true, nil
	}); err != nil {
		return fmt.Errorf("sources did not bind: %w", err)
	}
	random := rand.New(rand.NewPCG(seed, 0x5eed))
	for i, src := range w.sources {
		data := make([]byte, sourceBytes)
		for j := range data {
			data[j] = byte(random.UintN(256))
		}
		if _, err := w.env.WriteData(ctx, src.node, src.volume, data); err != nil {
			return fmt.Errorf("write source %d: %w", i, err)
		}
	}
	return nil
}
