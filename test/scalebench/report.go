package scalebench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is what make bench-scale writes: the points measured so far,
// with what produced them.
type Report struct {
	// Started is when the run began; Commit is the tree's git revision.
	Started time.Time `json:"started"`
	Commit  string    `json:"commit"`
	Config  struct {
		Updates         int     `json:"updates"`
		IdleSeconds     float64 `json:"idleSeconds"`
		ForeignFraction float64 `json:"foreignFraction"`
	} `json:"config"`
	Results []Result `json:"results"`
}

// WriteFiles writes the report as results.json and results.md into dir.
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.Markdown()), 0o644)
}

// Markdown is the report as two tables: memory per process, and the API
// server's view.
func (r *Report) Markdown() string {
	var out strings.Builder
	fmt.Fprintf(&out, "make bench-scale at %s (commit %s): %d claim updates per round, %s idle, %.0f%% foreign pairs\n\n",
		r.Started.UTC().Format(time.RFC3339), r.Commit, r.Config.Updates, time.Duration(r.Config.IdleSeconds*float64(time.Second)), r.Config.ForeignFraction*100)
	if len(r.Results) == 0 {
		out.WriteString("(no point measured)\n")
		return out.String()
	}
	var names []string
	for _, p := range r.Results[0].Processes {
		names = append(names, fmt.Sprintf("%s (%s)", p.Name, p.Scope))
	}
	out.WriteString("Memory once caches are filled, after the idle interval: RSS / peak RSS / Go heap in use, MiB\n\n")
	fmt.Fprintf(&out, "| pairs | nodes | %s |\n", strings.Join(names, " | "))
	fmt.Fprintf(&out, "|---:|---:|%s\n", strings.Repeat("---:|", len(names)))
	for _, result := range r.Results {
		cells := make([]string, 0, len(result.Processes))
		for _, p := range result.Processes {
			cells = append(cells, fmt.Sprintf("%.0f / %.0f / %.0f", mib(float64(p.RSSBytes)), mib(float64(p.PeakRSSBytes)), mib(float64(p.HeapInuseBytes))))
		}
		fmt.Fprintf(&out, "| %d | %d | %s |\n", result.Pairs, result.Nodes, strings.Join(cells, " | "))
	}
	out.WriteString("\nAPI server: open watches (control plane alone; added per node); PVC watch events per update of another node's claim " +
		"(control plane + central + this node's processes); idle requests/s (per node; all); seconds to Ready per process; wall time of the point\n\n")
	out.WriteString("| pairs | nodes | watches: control plane | watches per node | events/update: control plane | central | node | idle req/s per node | idle req/s all | sync s | setup s | measure s |\n")
	out.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n")
	for _, result := range r.Results {
		syncs := make([]string, 0, len(result.Processes))
		for _, p := range result.Processes {
			syncs = append(syncs, fmt.Sprintf("%s %.1f", p.Name, p.SyncSeconds))
		}
		e := result.EventsPerUpdate
		fmt.Fprintf(&out, "| %d | %d | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.0f | %s | %.0f | %.0f |\n",
			result.Pairs, result.Nodes, result.ControlPlaneWatches, result.NodeWatches, e.ControlPlane, e.Central, e.Node,
			result.IdleRequestsPerSecondPerNode, result.IdleRequestsPerSecondAll, strings.Join(syncs, ", "), result.SetupSeconds, result.MeasureSeconds)
	}
	return out.String()
}
