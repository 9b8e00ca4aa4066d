package driver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// TestSanity runs the upstream csi-sanity suite against a real driver on a
// unix socket, once with node-scope and once with zone-scope volumes.
func TestSanity(t *testing.T) {
	if !isRoot() {
		t.Fatal("csi-sanity stages and publishes with bind mounts and must run as root")
	}
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", t.TempDir())
	base := t.TempDir()
	for _, scope := range []string{"node", "zone"} {
		if err := os.MkdirAll(filepath.Join(base, scope), 0o750); err != nil {
			t.Fatal(err)
		}
		config := sanity.NewTestConfig()
		config.Address = h.endpoint
		config.TargetPath = filepath.Join(base, scope, "target")
		config.StagingPath = filepath.Join(base, scope, "staging")
		config.TestVolumeParameters = map[string]string{"scope": scope}
		config.TestVolumeSize = 64 << 20
		config.TestVolumeExpandSize = 128 << 20
		config.IDGen = idGenerator{node: "node1"}
		Describe("scope="+scope, func() { sanity.GinkgoTest(&config) })
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "toposnap CSI sanity")
}
