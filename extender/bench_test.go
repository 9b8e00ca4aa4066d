package extender

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// bigState is a cluster of nodes in 10 zones with pvs static local PVs
// spread over them, a no-provisioner class, a zone class and a node class.
func bigState(nodes, pvs int) *MemState {
	s := &MemState{Nodes: map[string]*corev1.Node{}, Claims: map[string]*corev1.PersistentVolumeClaim{},
		Volumes: map[string]*corev1.PersistentVolume{}, Classes: map[string]*storagev1.StorageClass{},
		Snapshots: map[string]*snapv1.VolumeSnapshot{}, Contents: map[string]*snapv1.VolumeSnapshotContent{}}
	for i := range nodes {
		name := fmt.Sprintf("node%05d", i)
		s.Nodes[name] = node(name, fmt.Sprintf("zone-%d", i%10))
	}
	for i := range pvs {
		pv := localPV(fmt.Sprintf("pv%05d", i), "local", fmt.Sprintf("%dGi", 1+i%20), fmt.Sprintf("node%05d", i%nodes))
		s.Volumes[pv.Name] = pv
	}
	for _, c := range []*storagev1.StorageClass{class("local", noProvisioner, "node"), class("topo-zone", driver, "zone", "zone-3"), class("topo-node", driver, "node")} {
		s.Classes[c.Name] = c
	}
	for _, c := range []*corev1.PersistentVolumeClaim{claim("local-pvc", "local", "10Gi"), claim("zone-pvc", "topo-zone", "5Gi"), claim("node-pvc", "topo-node", "5Gi")} {
		s.Claims[c.Namespace+"/"+c.Name] = c
	}
	for name := range s.Nodes {
		s.Capacity = append(s.Capacity, capacity("topo-node", map[string]string{topology.NodeKey: name}, "100Gi"))
	}
	s.Index()
	return s
}

// filterRequest is a filter request for a pod with a static, a zone and a
// node claim, naming every node of bigState(nodes, pvs) in order.
func filterRequest(b *testing.B, nodes, pvs int) (*MemState, []string, *corev1.Pod, []byte) {
	b.Helper()
	state := bigState(nodes, pvs)
	names := make([]string, 0, nodes)
	for name := range state.Nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	pod := podWith("local-pvc", "zone-pvc", "node-pvc")
	body, err := json.Marshal(extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
	if err != nil {
		b.Fatal(err)
	}
	return state, names, pod, body
}

// BenchmarkFilter measures Filter and Prioritize for a pod with a static,
// a zone and a node claim, reporting p50 and p99 per call: "decide" is the
// decision alone (in the compact form the server writes out, the names
// already looked up), "handler" the whole server side of a request (decode the
// ExtenderArgs with every node name, decide, encode the answer with every
// rejected node's reason) through the echo handler.
func BenchmarkFilter(b *testing.B) {
	for _, size := range []struct{ nodes, pvs int }{{500, 1000}, {5000, 10000}} {
		state, names, pod, body := filterRequest(b, size.nodes, size.pvs)
		handler := NewServer(func() State { return state }, driver).Handler()
		index := state.snapshot()
		refs := index.nodes.resolve(names)
		for _, verb := range []string{"filter", "prioritize"} {
			var verdicts []nodeVerdict
			var parts []scoreParts
			decide := func() { // as the server does, reusing the last answer's room
				if verb == "filter" {
					verdicts = decideAt(state, index, driver, pod, refs, verdicts).verdicts
				} else {
					parts = prioritizeAt(state, index, driver, pod, refs, parts).parts
				}
			}
			serve := func() {
				w := &discardWriter{header: http.Header{}}
				handler.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/"+verb, bytes.NewReader(body)))
				if w.code != http.StatusOK || w.written == 0 {
					b.Fatalf("%s: %d, %d bytes", verb, w.code, w.written)
				}
			}
			for _, part := range []struct {
				name string
				run  func()
			}{{"decide", decide}, {"handler", serve}} {
				b.Run(fmt.Sprintf("%s/%s/%dnodes-%dpvs", verb, part.name, size.nodes, size.pvs), func(b *testing.B) {
					var samples []time.Duration
					for b.Loop() {
						start := time.Now()
						part.run()
						samples = append(samples, time.Since(start))
					}
					sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
					b.ReportMetric(float64(samples[len(samples)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(samples[len(samples)*99/100].Microseconds())/1000, "p99-ms")
				})
			}
		}
	}
}

// discardWriter is a connection's side of a response: the bytes leave, as
// they would down a socket, rather than pile up in a recorder's buffer
// whose growth would be counted as the server's.
type discardWriter struct {
	header  http.Header
	code    int
	written int
}

func (w *discardWriter) Header() http.Header  { return w.header }
func (w *discardWriter) WriteHeader(code int) { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.written += len(p)
	return len(p), nil
}

// BenchmarkIndexRebuild measures rebuilding the PV and capacity index from
// the caches after a change (done at most every 100 ms under a stream of
// changes), with the previous snapshot's compiled candidates reused.
func BenchmarkIndexRebuild(b *testing.B) {
	state := bigState(5000, 10000)
	pvs := make([]*corev1.PersistentVolume, 0, len(state.Volumes))
	for _, pv := range state.Volumes {
		pvs = append(pvs, pv)
	}
	for b.Loop() {
		state.rebuild(pvs, state.Capacity)
	}
}
