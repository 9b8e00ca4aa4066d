package driver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/testpool"
)

// TestSanity runs the upstream csi-sanity suite against real drivers on
// unix sockets: one whose pools are plain directories (the dir backend)
// and one whose pools are loop-backed btrfs filesystems (the btrfs
// backend), each with node- and zone-scope volumes, mount and block.
func TestSanity(t *testing.T) {
	if !isRoot() {
		t.Fatal("csi-sanity stages and publishes with bind mounts and loop devices and must run as root")
	}
	drivers := []struct {
		backend          string
		nodeDir, zoneDir string
	}{
		{backend: store.BackendDir, zoneDir: t.TempDir()},
		{backend: store.BackendBtrfs, nodeDir: testpool.ForTest(t, 2<<30), zoneDir: testpool.ForTest(t, 2<<30)},
	}
	base := t.TempDir()
	for _, pools := range drivers {
		h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", pools.zoneDir, func(o *Options) {
			o.Backend, o.ZoneBackend = pools.backend, pools.backend
			if pools.nodeDir != "" {
				o.DataDir = filepath.Join(pools.nodeDir, "pool")
			}
		})
		if got := h.driver.nodePool.BackendName(); got != pools.backend {
			t.Fatalf("node pool backend is %s, want %s", got, pools.backend)
		}
		for _, scope := range []string{"node", "zone"} {
			for _, access := range []string{"mount", "block"} {
				name := pools.backend + "/" + scope + "/" + access
				dir := filepath.Join(base, pools.backend, scope, access)
				if err := os.MkdirAll(dir, 0o750); err != nil {
					t.Fatal(err)
				}
				config := sanity.NewTestConfig()
				config.Address = h.endpoint
				config.TargetPath = filepath.Join(dir, "target")
				config.StagingPath = filepath.Join(dir, "staging")
				config.TestVolumeParameters = map[string]string{"scope": scope}
				config.TestVolumeAccessType = access
				config.TestVolumeSize = 64 << 20
				config.TestVolumeExpandSize = 128 << 20
				config.IDGen = idGenerator{node: "node1"}
				Describe(name, func() { sanity.GinkgoTest(&config) })
			}
		}
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "toposnap CSI sanity")
}
