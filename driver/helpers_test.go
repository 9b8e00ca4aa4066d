package driver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/topology"
)

func isRoot() bool { return os.Geteuid() == 0 }

// harness is one driver process-equivalent: a Driver serving on a real unix
// socket, with clients for its three services.
type harness struct {
	driver     *Driver
	endpoint   string
	conn       *grpc.ClientConn
	controller csi.ControllerClient
	node       csi.NodeClient
	identity   csi.IdentityClient
	dataDir    string
}

// startDriver runs a driver for node with its node pool under a fresh temp
// directory and, when zoneDir is set, the zone pool in zoneDir (shared by
// drivers given the same zoneDir). Pools hold 1 GiB unless set otherwise.
func startDriver(t testing.TB, node, zone, region, zoneDir string, tweak ...func(*Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	opts := Options{
		Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), NodeID: node,
		DataDir: filepath.Join(dir, "pool"), ZoneDataDir: zoneDir,
		Capacity: 1 << 30, Zone: zone, Region: region, SnapshotWait: 5 * time.Second,
	}
	for _, f := range tweak {
		f(&opts)
	}
	d, err := New(opts, topology.Location{Node: node, Zone: zone, Region: region})
	if err != nil {
		t.Fatalf("start driver for %s: %v", node, err)
	}
	listener, err := listenUnix(opts.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	server := d.NewGRPCServer()
	go func() { _ = server.Serve(listener) }()
	conn, err := grpc.NewClient(opts.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		server.Stop()
		d.Close()
	})
	return &harness{
		driver: d, endpoint: opts.Endpoint, conn: conn, dataDir: opts.DataDir,
		controller: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), identity: csi.NewIdentityClient(conn),
	}
}

func mountCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// idGenerator gives csi-sanity IDs in toposnap's format, of the pool of
// the node under test (an ID of another node's pool is "elsewhere", not
// "not found").
type idGenerator struct{ node string }

func (g idGenerator) GenerateUniqueValidVolumeID() string {
	return store.MakeID(store.KindVolume, topology.ScopeNode, g.node, randomHex(8))
}
func (idGenerator) GenerateInvalidVolumeID() string   { return "not-a-toposnap-id" }
func (idGenerator) GenerateUniqueValidNodeID() string { return "node-" + randomHex(4) }
func (idGenerator) GenerateInvalidNodeID() string     { return "" }
