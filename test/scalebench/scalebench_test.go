package scalebench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/test/cluster"
)

// envInts reads a comma-separated list of sizes from the environment,
// sorted ascending (a cluster grows from one point to the next).
func envInts(tb testing.TB, name, fallback string) []int {
	tb.Helper()
	value := os.Getenv(name)
	if value == "" {
		value = fallback
	}
	var out []int
	for field := range strings.SplitSeq(value, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			tb.Fatalf("%s=%q: %q is not a positive count", name, value, field)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func envFloat(tb testing.TB, name string, fallback float64) float64 {
	tb.Helper()
	value := os.Getenv(name)
	if value == "" {
		return fallback
	}
	f, err := strconv.ParseFloat(value, 64)
	if err != nil {
		tb.Fatalf("%s=%q: %v", name, value, err)
	}
	return f
}

func envDuration(tb testing.TB, name string, fallback time.Duration) time.Duration {
	tb.Helper()
	value := os.Getenv(name)
	if value == "" {
		return fallback
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		tb.Fatalf("%s=%q: %v", name, value, err)
	}
	return d
}

// commit names the tree measured: HEAD, marked when it has changes.
func commit(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// BenchmarkScale measures every point of BENCH_SCALE_PAIRS x
// BENCH_SCALE_NODES (defaults 1000,10000,50000 and 100,1000,5000): one
// cluster per node count, grown from one pair count to the next. After
// each point it rewrites BENCH_SCALE_OUT (default bin/bench-scale)
// results.json and results.md, so a run cut short keeps what it measured.
// BENCH_SCALE_UPDATES (500) claims are updated per events round,
// BENCH_SCALE_IDLE (60s) is the idle interval, BENCH_SCALE_FOREIGN (0) the
// fraction of pairs of a foreign driver. Run it with -benchtime 1x (make
// bench-scale).
func BenchmarkScale(b *testing.B) {
	if testing.Short() {
		b.Skip("needs the local control plane")
	}
	pairs := envInts(b, "BENCH_SCALE_PAIRS", "1000,10000,50000")
	nodes := envInts(b, "BENCH_SCALE_NODES", "100,1000,5000")
	cfg := Config{
		Updates:      int(envFloat(b, "BENCH_SCALE_UPDATES", 500)),
		Idle:         envDuration(b, "BENCH_SCALE_IDLE", time.Minute),
		ReadyTimeout: 20 * time.Minute,
	}
	foreign := envFloat(b, "BENCH_SCALE_FOREIGN", 0)
	root, err := cluster.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	out := os.Getenv("BENCH_SCALE_OUT")
	if out == "" {
		out = filepath.Join(root, "bin", "bench-scale")
	}
	// The commit as the binaries are built: the tree may change meanwhile.
	report := &Report{Started: time.Now(), Commit: commit(root)}
	report.Config.Updates, report.Config.IdleSeconds, report.Config.ForeignFraction = cfg.Updates, cfg.Idle.Seconds(), foreign
	bin := b.TempDir()
	if err := Build(Processes, bin); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		for _, nodeCount := range nodes {
			begin := time.Now()
			bench, err := Start(ctx, Options{Nodes: nodeCount, ForeignFraction: foreign, BinDir: bin})
			if err != nil {
				b.Fatal(err)
			}
			for _, pairCount := range pairs {
				if err := bench.Grow(ctx, pairCount); err != nil {
					bench.Stop()
					b.Fatalf("%d pairs on %d nodes: %v (work files in %s)", pairCount, nodeCount, err, bench.Dir)
				}
				setup := time.Since(begin)
				result, err := bench.Measure(ctx, cfg)
				if err != nil {
					bench.Stop()
					b.Fatalf("%d pairs on %d nodes: %v (work files in %s)", pairCount, nodeCount, err, bench.Dir)
				}
				result.SetupSeconds = setup.Seconds()
				report.Results = append(report.Results, *result)
				if err := report.WriteFiles(out); err != nil {
					b.Fatal(err)
				}
				fmt.Printf("point %d pairs x %d nodes: setup %s, measure %s\n", pairCount, nodeCount,
					setup.Round(time.Second), time.Duration(result.MeasureSeconds*float64(time.Second)).Round(time.Second))
				begin = time.Now()
			}
			bench.Stop()
			if err := bench.RemoveDir(); err != nil {
				b.Log(err)
			}
		}
	}
	// Printed, not logged: the tables are what make bench-scale is for.
	fmt.Print(report.Markdown())
	fmt.Printf("\nwritten to %s\n", out)
}

// TestScaleBenchSmoke measures one small point (1,000 pairs, 100 nodes,
// a tenth of them foreign) and checks that every number was measured: a
// renamed metric, a process that never gets Ready or a FlowSchema that
// counts nothing fails here rather than in a long run.
func TestScaleBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the local control plane")
	}
	// About 90 s alone; make test runs other packages beside it on two
	// cores, which has taken it past 5 minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bench, err := Start(ctx, Options{Nodes: 100, ForeignFraction: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	defer bench.Stop()
	if err := bench.Grow(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Updates: 50, Idle: 10 * time.Second, ReadyTimeout: 5 * time.Minute}
	result, err := bench.Measure(ctx, cfg)
	if err != nil {
		t.Fatalf("%v (work files in %s)", err, bench.Dir)
	}
	checkPairsBound(ctx, t, bench)
	report := &Report{Started: time.Now(), Commit: "smoke", Results: []Result{*result}}
	report.Config.Updates, report.Config.IdleSeconds, report.Config.ForeignFraction = cfg.Updates, cfg.Idle.Seconds(), 0.1
	t.Log("\n" + report.Markdown())
	if result.Pairs != 1000 || result.ForeignPairs != 100 || result.Nodes != 100 {
		t.Errorf("measured %d pairs (%d foreign) on %d nodes, want 1000 (100) on 100", result.Pairs, result.ForeignPairs, result.Nodes)
	}
	if len(result.Processes) != len(Processes) {
		t.Fatalf("%d processes measured, want %d", len(result.Processes), len(Processes))
	}
	watching := 0
	for _, p := range result.Processes {
		if p.SyncSeconds <= 0 || p.RSSBytes <= 0 || p.PeakRSSBytes < p.RSSBytes || p.HeapInuseBytes <= 0 || p.HeapInuseBytes > p.PeakRSSBytes {
			t.Errorf("%s: sync %.2fs, RSS %d, peak %d, heap %d: want all positive, heap <= peak >= RSS",
				p.Name, p.SyncSeconds, p.RSSBytes, p.PeakRSSBytes, p.HeapInuseBytes)
		}
		// A process may hold no watch (the driver reads its node once)
		// and send nothing while idle; none can take one back.
		if p.Watches < 0 || p.IdleRequestsPerSecond < 0 {
			t.Errorf("%s: %.0f watches, %.2f idle requests/s: want neither negative", p.Name, p.Watches, p.IdleRequestsPerSecond)
		}
		if p.Watches > 0 {
			watching++
		}
	}
	if watching == 0 || result.NodeWatches <= 0 || result.ControlPlaneWatches <= 0 || result.TotalWatches <= result.ControlPlaneWatches {
		t.Errorf("watches: control plane %.0f, total %.0f, node %.0f, %d processes watching: want toposnap's processes to add some",
			result.ControlPlaneWatches, result.TotalWatches, result.NodeWatches, watching)
	}
	// The controller manager watches claims, so an update reaches it; the
	// node processes of today's main watch every claim (a node agent
	// watching its own would add 0 here, hence >= 0).
	if e := result.EventsPerUpdate; e.ControlPlane < 1 || e.Central < 0 || e.Node < 0 {
		t.Errorf("events per update %+v: want at least 1 to the control plane, none negative", e)
	}
	if result.IdleRequestsPerSecondPerNode <= 0 || result.IdleRequestsPerSecondAll <= result.IdleRequestsPerSecondPerNode {
		t.Errorf("idle requests/s: per node %.2f, all %.2f: want the node's positive and below the total",
			result.IdleRequestsPerSecondPerNode, result.IdleRequestsPerSecondAll)
	}
	if !t.Failed() {
		if err := bench.RemoveDir(); err != nil {
			t.Log(err)
		}
	}
}

// checkPairsBound fails unless every claim and PV is Bound and no
// controller called a claim Lost: the world measured is the one meant.
func checkPairsBound(ctx context.Context, t *testing.T, bench *Bench) {
	t.Helper()
	claims, err := bench.Client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	volumes, err := bench.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bound := 0
	for _, claim := range claims.Items {
		if claim.Status.Phase == corev1.ClaimBound {
			bound++
		}
	}
	for _, pv := range volumes.Items {
		if pv.Status.Phase == corev1.VolumeBound {
			bound++
		}
	}
	if want := 2 * bench.Pairs(); bound != want || len(claims.Items)+len(volumes.Items) != want {
		t.Errorf("%d of %d claims and PVs Bound, want all %d", bound, len(claims.Items)+len(volumes.Items), want)
	}
	events, err := bench.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "reason=ClaimLost"})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.Items) > 0 {
		t.Errorf("%d ClaimLost events, the first: %s %s", len(events.Items), events.Items[0].InvolvedObject.Name, events.Items[0].Message)
	}
}

func TestParseSamples(t *testing.T) {
	text := `# HELP apiserver_longrunning_requests [STABLE] Gauge of all active long-running apiserver requests.
# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{component="apiserver",group="",resource="persistentvolumeclaims",scope="cluster",subresource="",verb="WATCH",version="v1"} 7
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="namespace",subresource="exec",verb="CONNECT",version="v1"} 1
apiserver_longrunning_requests{component="apiserver",group="",resource="nodes",scope="cluster",subresource="",verb="WATCH",version="v1"} 5
apiserver_watch_events_total{group="",resource="persistentvolumeclaims",version="v1"} 1.5e+03
apiserver_request_total{code="200",verb="GET"} 10 1712345678000
apiserver_flowcontrol_dispatched_requests_total{flow_schema="scalebench-provisioner",priority_level="workload-low"} 12
apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",priority_level="exempt"} 30
weird_label{path="a\"b\\c\nd",x="}"} 1
go_memstats_heap_inuse_bytes 4.2e+06
`
	samples, err := ParseSamples(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	counters, err := countersOf(samples)
	if err != nil {
		t.Fatal(err)
	}
	if counters.watches != 12 || counters.claimEvents != 1500 || counters.requests != 10 ||
		counters.dispatched["scalebench-provisioner"] != 12 || counters.dispatched["exempt"] != 30 {
		t.Errorf("counters %+v: want 12 watches, 1500 claim events, 10 requests, 12 and 30 dispatched", counters)
	}
	if heap, found := samples.Sum("go_memstats_heap_inuse_bytes", nil); !found || heap != 4.2e6 {
		t.Errorf("heap %v (found %v), want 4.2e6", heap, found)
	}
	if value, found := samples.Sum("weird_label", map[string]string{"path": "a\"b\\c\nd", "x": "}"}); !found || value != 1 {
		t.Errorf("escaped label values not read back: %v %v", value, found)
	}
}

func TestCountersRefuseMissingSeries(t *testing.T) {
	samples, err := ParseSamples(strings.NewReader(`apiserver_request_total{code="200"} 3` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := countersOf(samples); err == nil {
		t.Error("a scrape without the watch series read as zero watches")
	}
}

func TestParseSamplesRejectsMalformedLines(t *testing.T) {
	for _, line := range []string{"no_value", `broken{a="b" 1`, `bad{a=b} 1`, "name notanumber"} {
		if _, err := ParseSamples(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("%q parsed without error", line)
		}
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\ttoposnap-provisioner\nVmPeak:\t 1000 kB\nVmHWM:\t   81920 kB\nVmRSS:\t   40960 kB\nThreads:\t12\n"
	m, err := parseStatus(strings.NewReader(status))
	if err != nil {
		t.Fatal(err)
	}
	if m.rss != 40<<20 || m.peak != 80<<20 {
		t.Errorf("rss %d, peak %d: want 40 MiB and 80 MiB", m.rss, m.peak)
	}
	if _, err := parseStatus(strings.NewReader("Name:\tzombie\n")); err == nil {
		t.Error("a status without VmRSS read as zero memory")
	}
}

func TestProcessTable(t *testing.T) {
	if err := checkProcesses(Processes); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name  string
		table []Process
	}{
		{"duplicate names", []Process{Processes[0], Processes[0]}},
		{"no readiness path", []Process{{Name: "x", Package: "./x", Scope: Node, Args: Processes[0].Args}}},
		{"unknown scope", []Process{{Name: "x", Package: "./x", Scope: "zone", Args: Processes[0].Args, Ready: "/readyz"}}},
	}
	for _, tc := range bad {
		if err := checkProcesses(tc.table); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestForeignNodeClaimsAvoidTheMeasuredNode(t *testing.T) {
	b := &Bench{opts: Options{Nodes: 10, ForeignFraction: 0.1}, pairs: 1000}
	picked := b.foreignNodeClaims(200)
	if len(picked) != 200 {
		t.Fatalf("picked %d claims, want 200", len(picked))
	}
	seen := map[int]bool{}
	for _, i := range picked {
		if i%10 == 0 || b.isForeign(i) || seen[i] || i >= 1000 {
			t.Fatalf("picked pair %d: on the measured node, foreign, repeated or out of range", i)
		}
		seen[i] = true
	}
}

func TestReportShowsEveryPointAndProcess(t *testing.T) {
	report := &Report{Results: []Result{
		{Pairs: 1000, Nodes: 100, Processes: []ProcessResult{{Name: "agent", Scope: Node, RSSBytes: 30 << 20, PeakRSSBytes: 40 << 20, HeapInuseBytes: 10 << 20}}},
		{Pairs: 50000, Nodes: 5000, Processes: []ProcessResult{{Name: "agent", Scope: Node, RSSBytes: 31 << 20, PeakRSSBytes: 41 << 20, HeapInuseBytes: 11 << 20}}},
	}}
	dir := t.TempDir()
	if err := report.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	markdown, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"agent (node)", "| 1000 | 100 | 30 / 40 / 10 |", "| 50000 | 5000 | 31 / 41 / 11 |"} {
		if !strings.Contains(string(markdown), want) {
			t.Errorf("results.md lacks %q:\n%s", want, markdown)
		}
	}
}
