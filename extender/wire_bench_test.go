package extender

import (
	"encoding/json"
	"fmt"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// BenchmarkWire holds the hand-written wire code (parseArgs, appendJSON) to
// the reason it exists: it must be at least twice as fast as a maintained
// library decoder and encoder doing the same job. For each cluster size it
// times, in the same run, reading a filter request (every node name, looked
// up in the node table) and writing the answer (every rejected node with
// its reason) three ways: this package's scanner and writer,
// github.com/go-json-experiment/json (encoding/json/v2's implementation)
// into the extender API's types, and encoding/json the same way. It reports
// the scanner's speed-up over each library as metrics (x-vs-jsonv2 and
// x-vs-encoding-json, per direction and for the round trip).
func BenchmarkWire(b *testing.B) {
	for _, size := range []struct{ nodes, pvs int }{{500, 1000}, {5000, 10000}} {
		state, names, pod, body := filterRequest(b, size.nodes, size.pvs)
		var err error
		index := state.snapshot()
		table := index.nodes
		answer := decideAt(state, index, driver, pod, table.resolve(names), nil)
		if failed := len(answer.result().FailedNodes) + len(answer.result().FailedAndUnresolvableNodes); failed == 0 {
			b.Fatal("the answer rejects no node: nothing to write")
		}
		// The server keeps a request's buffer and node refs for the next
		// one (pooled); so does each way here.
		scratch := make([]byte, len(body))
		var refs nodeRefs
		var out []byte
		decoders := map[string]func(){
			"scanner": func() {
				scratch = append(scratch[:0], body...) // parseArgs rewrites its input
				if _, _, err := parseArgs(scratch, table, &refs); err != nil || len(refs.nodes) != len(names) {
					b.Fatalf("scanner: %v, %d nodes", err, len(refs.nodes))
				}
			},
			"jsonv2": func() {
				var args extenderv1.ExtenderArgs
				if err := jsonv2.Unmarshal(body, &args); err != nil {
					b.Fatal(err)
				}
				refs.names = *args.NodeNames
				if refs.lookUp(table); len(refs.nodes) != len(names) {
					b.Fatalf("jsonv2: %d nodes", len(refs.nodes))
				}
			},
			"encoding-json": func() {
				var args extenderv1.ExtenderArgs
				if err := json.Unmarshal(body, &args); err != nil {
					b.Fatal(err)
				}
				refs.names = *args.NodeNames
				if refs.lookUp(table); len(refs.nodes) != len(names) {
					b.Fatalf("encoding/json: %d nodes", len(refs.nodes))
				}
			},
		}
		encoders := map[string]func(){
			"scanner": func() { out = answer.appendJSON(out[:0]) },
			"jsonv2": func() {
				if out, err = jsonv2.Marshal(answer.result()); err != nil {
					b.Fatal(err)
				}
			},
			"encoding-json": func() {
				if out, err = json.Marshal(answer.result()); err != nil {
					b.Fatal(err)
				}
			},
		}
		timed := map[string]float64{} // ns per operation, by "direction/way"
		for _, direction := range []struct {
			name string
			ways map[string]func()
		}{{"decode", decoders}, {"encode", encoders}} {
			for _, way := range []string{"scanner", "jsonv2", "encoding-json"} {
				run := direction.ways[way]
				name := fmt.Sprintf("%s/%s/%dnodes", direction.name, way, size.nodes)
				b.Run(name, func(b *testing.B) {
					for b.Loop() {
						run()
					}
					timed[direction.name+"/"+way] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				})
			}
		}
		b.Run(fmt.Sprintf("speedup/%dnodes", size.nodes), func(b *testing.B) {
			for b.Loop() {
			}
			for _, way := range []string{"jsonv2", "encoding-json"} {
				for _, direction := range []string{"decode", "encode"} {
					b.ReportMetric(timed[direction+"/"+way]/timed[direction+"/scanner"], fmt.Sprintf("x-%s-vs-%s", direction, way))
				}
				roundTrip := (timed["decode/"+way] + timed["encode/"+way]) / (timed["decode/scanner"] + timed["encode/scanner"])
				b.ReportMetric(roundTrip, "x-roundtrip-vs-"+way)
			}
		})
	}
}
