package scalebench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/test/harness"
)

// Config says how one point is measured.
type Config struct {
	// Updates is how many claims each events-per-update round changes.
	Updates int
	// Idle is how long requests are counted while nothing changes; memory
	// is read at its end.
	Idle time.Duration
	// ReadyTimeout bounds each process's wait for its caches.
	ReadyTimeout time.Duration
}

// ProcessResult is what one process cost.
type ProcessResult struct {
	Name  string `json:"name"`
	Scope Scope  `json:"scope"`
	// SyncSeconds is from its start to its Ready path answering 200.
	SyncSeconds float64 `json:"syncSeconds"`
	// RSSBytes and PeakRSSBytes are VmRSS and VmHWM at the end of the idle
	// interval; HeapInuseBytes is its go_memstats_heap_inuse_bytes then.
	RSSBytes       int64 `json:"rssBytes"`
	PeakRSSBytes   int64 `json:"peakRssBytes"`
	HeapInuseBytes int64 `json:"heapInuseBytes"`
	// Watches is how many more WATCH requests the API server held once
	// the process had started and settled.
	Watches float64 `json:"watches"`
	// IdleRequestsPerSecond is the requests its FlowSchema admitted during
	// the idle interval, per second.
	IdleRequestsPerSecond float64 `json:"idleRequestsPerSecond"`
}

// EventsPerUpdate is how many PVC watch events the API server sent per
// update of a claim that is not the measured node's, split by who was
// running: the control plane alone, what the central processes added,
// what the measured node's processes added (in a cluster of N nodes, a
// node process receiving an update of another node's claim pays this N-1
// times over).
type EventsPerUpdate struct {
	ControlPlane float64 `json:"controlPlane"`
	Central      float64 `json:"central"`
	Node         float64 `json:"node"`
}

// Result is one measured point.
type Result struct {
	Pairs        int `json:"pairs"`
	ForeignPairs int `json:"foreignPairs"`
	Nodes        int `json:"nodes"`
	// SetupSeconds is how long growing the cluster to this point took
	// (nodes for the first point of a cluster, then pairs).
	SetupSeconds   float64         `json:"setupSeconds"`
	MeasureSeconds float64         `json:"measureSeconds"`
	Processes      []ProcessResult `json:"processes"`
	// ControlPlaneWatches is the API server's open WATCH requests before
	// any toposnap process started; TotalWatches with all of them running.
	ControlPlaneWatches float64 `json:"controlPlaneWatches"`
	TotalWatches        float64 `json:"totalWatches"`
	// NodeWatches is the sum of the node processes' watches: what each
	// node adds.
	NodeWatches     float64         `json:"nodeWatches"`
	EventsPerUpdate EventsPerUpdate `json:"eventsPerUpdate"`
	// IdleRequestsPerSecondPerNode is the node processes' idle request
	// rate, summed: what each node adds. IdleRequestsPerSecondAll is every
	// request the API server served meanwhile (kwok's heartbeats included).
	IdleRequestsPerSecondPerNode float64 `json:"idleRequestsPerSecondPerNode"`
	IdleRequestsPerSecondAll     float64 `json:"idleRequestsPerSecondAll"`
}

// Process returns the result of the named process, or nil.
func (r *Result) Process(name string) *ProcessResult {
	for i := range r.Processes {
		if r.Processes[i].Name == name {
			return &r.Processes[i]
		}
	}
	return nil
}

// Measure starts the central processes and then the measured node's, each
// once the previous one is Ready; counts the watches each adds, the PVC
// events per update with none, the central and all of them running, the
// requests of each while idle, and at the end of that, their memory. It
// stops them all before it returns.
func (b *Bench) Measure(ctx context.Context, cfg Config) (*Result, error) {
	begin := time.Now()
	b.runs++
	runDir := filepath.Join(b.Dir, fmt.Sprintf("run%d", b.runs))
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return nil, err
	}
	result := &Result{Pairs: b.pairs, Nodes: b.opts.Nodes}
	for i := range b.pairs {
		if b.isForeign(i) {
			result.ForeignPairs++
		}
	}
	log := klog.FromContext(ctx)
	var started []*running
	defer func() {
		for _, r := range slices.Backward(started) {
			r.stop(10 * time.Second)
		}
	}()

	watches, err := b.settledWatches(ctx)
	if err != nil {
		return nil, err
	}
	result.ControlPlaneWatches = watches
	if result.EventsPerUpdate.ControlPlane, err = b.eventsPerUpdate(ctx, cfg.Updates, "control-plane"); err != nil {
		return nil, err
	}
	socket := filepath.Join(runDir, "csi.sock")
	for _, scope := range []Scope{Central, Node} {
		for _, p := range b.processes {
			if p.Scope != scope {
				continue
			}
			at, err := b.where(p, runDir, socket)
			if err != nil {
				return nil, err
			}
			startedAt := time.Now()
			r, err := startProcess(p, filepath.Join(b.bin, p.Binary()), at, filepath.Join(runDir, p.Name+".log"))
			if err != nil {
				return nil, err
			}
			started = append(started, r)
			if err := r.waitReady(ctx, cfg.ReadyTimeout); err != nil {
				return nil, err
			}
			sync := time.Since(startedAt)
			now, err := b.settledWatches(ctx)
			if err != nil {
				return nil, err
			}
			result.Processes = append(result.Processes, ProcessResult{Name: p.Name, Scope: p.Scope, SyncSeconds: sync.Seconds(), Watches: now - watches})
			log.Info("Process ready", "process", p.Name, "sync", sync.Round(time.Millisecond), "watches", now-watches)
			watches = now
		}
		stage := "central"
		if scope == Node {
			stage = "node"
		}
		events, err := b.eventsPerUpdate(ctx, cfg.Updates, stage)
		if err != nil {
			return nil, err
		}
		if scope == Central {
			result.EventsPerUpdate.Central = events - result.EventsPerUpdate.ControlPlane
		} else {
			result.EventsPerUpdate.Node = events - result.EventsPerUpdate.ControlPlane - result.EventsPerUpdate.Central
		}
	}
	result.TotalWatches = watches
	if err := b.measureIdle(ctx, cfg.Idle, started, result); err != nil {
		return nil, err
	}
	for i, r := range started {
		if err := readProcessMemory(ctx, r, &result.Processes[i]); err != nil {
			return nil, err
		}
		if result.Processes[i].Scope == Node {
			result.NodeWatches += result.Processes[i].Watches
			result.IdleRequestsPerSecondPerNode += result.Processes[i].IdleRequestsPerSecond
		}
	}
	result.MeasureSeconds = time.Since(begin).Seconds()
	return result, nil
}

// where prepares what process p needs for this run.
func (b *Bench) where(p Process, runDir, socket string) (Where, error) {
	metricsPort, err := harness.FreePort()
	if err != nil {
		return Where{}, err
	}
	listenPort, err := harness.FreePort()
	if err != nil {
		return Where{}, err
	}
	dir := filepath.Join(runDir, p.Name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return Where{}, err
	}
	return Where{
		Kubeconfig: b.kubeconfigs[p.Name],
		Metrics:    fmt.Sprintf("127.0.0.1:%d", metricsPort),
		Listen:     fmt.Sprintf("127.0.0.1:%d", listenPort),
		Node:       MeasuredNode,
		Socket:     socket,
		TLSCert:    b.pki.CertFile,
		TLSKey:     b.pki.KeyFile,
		Dir:        dir,
		Namespace:  SystemNamespace,
	}, nil
}

// settledWatches reads the API server's open WATCH requests once three
// readings a second apart agree (a process that just got Ready may still
// be opening watches), or the last reading after a minute.
func (b *Bench) settledWatches(ctx context.Context) (float64, error) {
	var last float64
	same := 0
	for range 60 {
		counters, err := readAPICounters(ctx, b.Cluster.Client)
		if err != nil {
			return 0, err
		}
		if counters.watches == last {
			same++
		} else {
			last, same = counters.watches, 0
		}
		if same == 2 {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	klog.FromContext(ctx).Info("Open watches did not settle in a minute; using the last reading", "watches", last)
	return last, nil
}

// eventsPerUpdate changes an annotation of updates claims of other nodes
// than the measured one (toposnap's, spread over the pairs), waits until
// the API server's count of PVC watch events stops moving, and returns how
// many events were sent per update.
func (b *Bench) eventsPerUpdate(ctx context.Context, updates int, stage string) (float64, error) {
	targets := b.foreignNodeClaims(updates)
	if len(targets) == 0 {
		return 0, errors.New("no claim of another node to update: the bench needs at least two nodes and one toposnap pair")
	}
	// Start from a still count: a controller catching up (the controller
	// manager after Grow paused it) must not be counted as fan-out.
	settling := time.Now()
	before, err := b.settledClaimEvents(ctx)
	if err != nil {
		return 0, err
	}
	settled := time.Since(settling)
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{"scalebench.toposnap.io/touched":"run%d-%s"}}}`, b.runs, stage)
	var patched atomic.Int64
	err = parallel(ctx, len(targets), func(ctx context.Context, i int) error {
		ns, name := claimName(targets[i])
		if _, err := b.Client.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("update claim %s/%s: %w", ns, name, err)
		}
		patched.Add(1)
		return nil
	})
	if err != nil {
		return 0, err
	}
	after, err := b.settledClaimEvents(ctx)
	if err != nil {
		return 0, err
	}
	perUpdate := (after - before) / float64(patched.Load())
	klog.FromContext(ctx).Info("PVC watch events per update", "stage", stage, "updates", patched.Load(), "events", after-before, "perUpdate", perUpdate,
		"settledBefore", settled.Round(time.Millisecond))
	return perUpdate, nil
}

// settledClaimEvents reads the PVC watch event count once it has not
// moved for two seconds (events reach watchers asynchronously); it fails
// if the count is still moving after ten minutes.
func (b *Bench) settledClaimEvents(ctx context.Context) (float64, error) {
	var last float64
	same := 0
	for range 1200 {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		counters, err := readAPICounters(ctx, b.Cluster.Client)
		if err != nil {
			return 0, err
		}
		if counters.claimEvents == last {
			same++
		} else {
			last, same = counters.claimEvents, 0
		}
		if same == 4 {
			return last, nil
		}
	}
	return 0, errors.New("PVC watch events still being sent after ten minutes")
}

// foreignNodeClaims picks up to n toposnap pairs of nodes other than the
// measured one, spread over all pairs (a prime stride walks them all).
func (b *Bench) foreignNodeClaims(n int) []int {
	const stride = 7919
	var picked []int
	seen := map[int]bool{}
	for step := 0; step < b.pairs && len(picked) < n; step++ {
		i := (step * stride) % b.pairs
		if seen[i] {
			break // the stride divides the count: the walk came round
		}
		seen[i] = true
		if i%b.opts.Nodes != 0 && !b.isForeign(i) {
			picked = append(picked, i)
		}
	}
	return picked
}

// measureIdle counts, over idle, the requests each process's FlowSchema
// admitted and every request the API server served.
func (b *Bench) measureIdle(ctx context.Context, idle time.Duration, started []*running, result *Result) error {
	before, err := readAPICounters(ctx, b.Cluster.Client)
	if err != nil {
		return err
	}
	begin := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(idle):
	}
	after, err := readAPICounters(ctx, b.Cluster.Client)
	if err != nil {
		return err
	}
	seconds := time.Since(begin).Seconds()
	for i, r := range started {
		if gone, exitErr := r.exited(); gone {
			return fmt.Errorf("%s exited while idle (%w); end of %s:\n%s", r.Name, exitErr, r.logPath, logTail(r.logPath, 3000))
		}
		schema := flowSchema(r.Name)
		if _, ok := after.dispatched[schema]; !ok {
			return fmt.Errorf("the API server counted no request of %s under FlowSchema %s", r.Name, schema)
		}
		result.Processes[i].IdleRequestsPerSecond = (after.dispatched[schema] - before.dispatched[schema]) / seconds
	}
	result.IdleRequestsPerSecondAll = (after.requests - before.requests) / seconds
	return nil
}

// readProcessMemory reads a running process's resident and peak memory
// from /proc and its Go heap from its /metrics.
func readProcessMemory(ctx context.Context, r *running, into *ProcessResult) error {
	mem, err := readMemory(r.cmd.Process.Pid)
	if err != nil {
		return fmt.Errorf("memory of %s: %w", r.Name, err)
	}
	samples, err := scrapeHTTP(ctx, r.at.Metrics)
	if err != nil {
		return fmt.Errorf("metrics of %s: %w", r.Name, err)
	}
	heap, found := samples.Sum("go_memstats_heap_inuse_bytes", nil)
	if !found {
		return fmt.Errorf("%s serves no go_memstats_heap_inuse_bytes", r.Name)
	}
	into.RSSBytes, into.PeakRSSBytes, into.HeapInuseBytes = mem.rss, mem.peak, int64(heap)
	return nil
}
