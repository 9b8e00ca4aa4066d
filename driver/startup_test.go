package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/toposnap/toposnap/internal/topology"
)

// fakeNodeAPI is just enough of an API server for the driver's start-up: it
// serves GET /api/v1/nodes/<name> from a Node that the test swaps, and its
// listener can be closed to callers (every connection is dropped at once)
// to play an API server that is down.
type fakeNodeAPI struct {
	listener net.Listener
	open     atomic.Bool
	attempts atomic.Int64 // connections and requests seen, answered or not
	mu       sync.Mutex
	node     *corev1.Node // nil: 404, the Node is not registered
}

func startFakeNodeAPI(t *testing.T) *fakeNodeAPI {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api := &fakeNodeAPI{listener: listener}
	server := &http.Server{Handler: http.HandlerFunc(api.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = server.Serve(gatedListener{api}) }()
	t.Cleanup(func() { _ = server.Close() })
	return api
}

// gatedListener drops every connection while the API is "down".
type gatedListener struct{ api *fakeNodeAPI }

func (g gatedListener) Accept() (net.Conn, error) {
	for {
		conn, err := g.api.listener.Accept()
		if err != nil {
			return nil, err
		}
		if g.api.open.Load() {
			return conn, nil
		}
		g.api.attempts.Add(1)
		_ = conn.Close()
	}
}
func (g gatedListener) Close() error   { return g.api.listener.Close() }
func (g gatedListener) Addr() net.Addr { return g.api.listener.Addr() }

func (api *fakeNodeAPI) serve(w http.ResponseWriter, r *http.Request) {
	api.attempts.Add(1)
	name, ok := strings.CutPrefix(r.URL.Path, "/api/v1/nodes/")
	api.mu.Lock()
	node := api.node
	api.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if !ok || r.Method != http.MethodGet || node == nil || node.Name != name {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(metav1.Status{
			TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound, Message: fmt.Sprintf("nodes %q not found", name),
		})
		return
	}
	_ = json.NewEncoder(w).Encode(node)
}

func (api *fakeNodeAPI) setNode(node *corev1.Node) {
	if node != nil {
		node = node.DeepCopy()
		node.TypeMeta = metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}
	}
	api.mu.Lock()
	api.node = node
	api.mu.Unlock()
}

func (api *fakeNodeAPI) kubeconfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://%s"}}]
users: [{name: fake, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: fake}}]
current-context: fake
`, api.listener.Addr())
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func probe(address, path string) (int, string) {
	resp, err := http.Get("http://" + address + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func labelledNode(labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints},
	}
}

// TestStartUpWaitsForTheNodesTopology starts the real Run with a Node it
// cannot use yet, checks that the driver serves no CSI socket, stays alive
// and says in /readyz what it waits for, then makes the Node usable and
// checks that NodeGetInfo reports the Node's labels. Each world is a way the
// cluster can look while a node boots.
func TestStartUpWaitsForTheNodesTopology(t *testing.T) {
	zoneLabels := map[string]string{topology.ZoneKey: "cn-hangzhou-b", topology.RegionKey: "cn-hangzhou"}
	tests := []struct {
		name      string
		apiDown   bool         // connections are dropped
		before    *corev1.Node // what the API serves at first (nil: no Node)
		zonePool  bool
		waitingOn string // what /readyz says meanwhile
	}{
		{name: "API server unreachable", apiDown: true, waitingOn: "read Node node1"},
		{name: "Node not registered yet", waitingOn: "not found"},
		{name: "Node not initialized by its cloud provider", waitingOn: "not initialized",
			before: labelledNode(nil, corev1.Taint{Key: uninitializedTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule})},
		{name: "zone pool and no zone label yet", zonePool: true, waitingOn: "zone pool needs",
			before: labelledNode(map[string]string{"kubernetes.io/hostname": "node1"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := startFakeNodeAPI(t)
			api.open.Store(!tt.apiDown)
			api.setNode(tt.before)
			dir := t.TempDir()
			metricsAddress := freeAddress(t)
			socket := filepath.Join(dir, "csi.sock")
			opts := Options{
				Endpoint: "unix://" + socket, NodeID: "node1", DataDir: filepath.Join(dir, "pool"),
				Capacity: 1 << 30, Kubeconfig: api.kubeconfig(t), MetricsAddress: metricsAddress,
				nodeRetryInitial: 10 * time.Millisecond, nodeRetryMax: 50 * time.Millisecond,
			}
			if tt.zonePool {
				opts.ZoneDataDir = filepath.Join(dir, "zone")
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Run(ctx, opts) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			})

			// Waiting: several reads tried, no socket, alive but not ready.
			err := wait.PollUntilContextTimeout(ctxT(t), 10*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
				code, body := probe(metricsAddress, "/readyz")
				return api.attempts.Load() >= 3 && code == http.StatusServiceUnavailable && strings.Contains(body, tt.waitingOn), nil
			})
			if err != nil {
				code, body := probe(metricsAddress, "/readyz")
				t.Fatalf("driver is not visibly waiting: %d attempts, /readyz %d %q", api.attempts.Load(), code, body)
			}
			if _, err := os.Stat(socket); !os.IsNotExist(err) {
				t.Fatalf("the CSI socket exists before the node's topology is known: %v", err)
			}
			if code, body := probe(metricsAddress, "/healthz"); code != http.StatusOK {
				t.Fatalf("/healthz while waiting = %d %q; waiting is not a fault", code, body)
			}
			select {
			case err := <-done:
				t.Fatalf("Run gave up while the node's topology was unknown: %v", err)
			default:
			}

			// The cluster catches up: the driver serves the Node's labels.
			api.setNode(labelledNode(zoneLabels))
			api.open.Store(true)
			err = wait.PollUntilContextTimeout(ctxT(t), 10*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
				code, _ := probe(metricsAddress, "/readyz")
				return code == http.StatusOK, nil
			})
			if err != nil {
				code, body := probe(metricsAddress, "/readyz")
				t.Fatalf("driver never became ready: /readyz %d %q", code, body)
			}
			conn, err := grpc.NewClient(opts.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			info, err := csi.NewNodeClient(conn).NodeGetInfo(ctxT(t), &csi.NodeGetInfoRequest{})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{topology.NodeKey: "node1", topology.ZoneKey: "cn-hangzhou-b", topology.RegionKey: "cn-hangzhou"}
			if got := info.GetAccessibleTopology().GetSegments(); !maps.Equal(got, want) {
				t.Fatalf("NodeGetInfo topology = %v, want %v", got, want)
			}
		})
	}
}
