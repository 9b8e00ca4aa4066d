package node

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"sigs.k8s.io/yaml"

	"github.com/toposnap/toposnap/test/cluster"
)

// Release names what InstallToposnap installed.
const (
	ReleaseName      = "toposnap"
	ReleaseNamespace = "toposnap-system"
	// RegistrarImage is this project's registrar (hack/tools/node-images),
	// standing in for the upstream node-driver-registrar, which cannot be
	// built here.
	RegistrarImage = "toposnap.test/node-driver-registrar:dev"
	// ToposnapVersion tags the image `make image` builds for the node.
	ToposnapVersion = "0.1.0"
)

// InstallOptions change what InstallToposnap installs.
type InstallOptions struct {
	// Values are merged over the node's values (see toposnapValues).
	Values map[string]any
}

// InstallToposnap builds toposnap's image (hack/image.sh, as `make image`),
// imports it, and installs charts/toposnap with helm on the node: the node
// DaemonSet with the registrar, the extender, the webhook and the second
// scheduler, the snapshot CRDs and toposnap as snapshot controller. It
// returns once helm's --wait is satisfied (every pod Ready), then upgrades
// once so the VolumeSnapshotClass renders now that the CRDs are served.
func (n *Node) InstallToposnap(ctx context.Context, opts InstallOptions) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	image := n.path("toposnap-image.tar")
	build := exec.CommandContext(ctx, filepath.Join(root, "hack", "image.sh"))
	build.Dir = root
	build.Env = append(os.Environ(), "VERSION="+ToposnapVersion, "OUT="+image, "OCI_OUT="+n.path("toposnap-image.oci.tar"))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build toposnap's image: %w", err)
	}
	if err := n.ImportImage(ctx, image); err != nil {
		return fmt.Errorf("import toposnap's image: %w", err)
	}
	values, err := yaml.Marshal(mergeValues(n.toposnapValues(), opts.Values))
	if err != nil {
		return err
	}
	valuesFile := n.path("toposnap-values.yaml")
	if err := os.WriteFile(valuesFile, values, 0o644); err != nil {
		return err
	}
	for _, verb := range []string{"install", "upgrade"} {
		args := []string{verb, ReleaseName, filepath.Join(root, "charts", "toposnap"), "--namespace", ReleaseNamespace,
			"-f", valuesFile, "--wait", "--timeout", "5m"}
		if verb == "install" {
			args = append(args, "--create-namespace")
		}
		if out, err := n.Helm(ctx, args...); err != nil {
			return fmt.Errorf("helm %s: %w\n%s", verb, err, out)
		}
	}
	return nil
}

// toposnapValues are the chart values for this node: local images that are
// never pulled, the kubelet's directory, the node pool under the node's
// directory, the snapshot CRDs and toposnap's snapshot controller (no other
// one runs here), and the second scheduler. The webhook and the extender
// keep the chart's two replicas: with failurePolicy Fail, one webhook pod
// restarted by a liveness probe on a busy machine would otherwise refuse
// every StorageClass and restore while it is down.
func (n *Node) toposnapValues() map[string]any {
	return map[string]any{
		"image":     map[string]any{"tag": ToposnapVersion, "pullPolicy": "Never"},
		"registrar": map[string]any{"image": RegistrarImage, "pullPolicy": "Never"},
		"node": map[string]any{
			"kubeletDir": n.KubeletDir,
			"pool":       map[string]any{"hostPath": n.path("pools", "node"), "capacity": "100Gi"},
			"logLevel":   4,
			// The provisioner publishes a new StorageClass's capacity only at
			// its next refresh, and until then the scheduler finds no room
			// for the class on any node: every e2e spec makes its own class,
			// and with the default minute its first pod waited up to a
			// minute to be scheduled (docs/conformance.md).
			"provisioner": map[string]any{"capacityInterval": "5s"},
		},
		"snapshotCRDs":       map[string]any{"install": true},
		"snapshotController": map[string]any{"toposnap": true},
		"scheduler":          map[string]any{"enabled": true, "pullPolicy": "Never"},
	}
}

// mergeValues merges override into base, maps recursively.
func mergeValues(base, override map[string]any) map[string]any {
	merged := map[string]any{}
	for key, value := range base {
		merged[key] = value
	}
	for key, value := range override {
		baseMap, baseIsMap := merged[key].(map[string]any)
		overrideMap, overrideIsMap := value.(map[string]any)
		if baseIsMap && overrideIsMap {
			merged[key] = mergeValues(baseMap, overrideMap)
			continue
		}
		merged[key] = value
	}
	return merged
}

// Helm runs helm (hack/build-helm.sh's) against the node's cluster.
func (n *Node) Helm(ctx context.Context, args ...string) ([]byte, error) {
	helm, err := runScript("hack/build-helm.sh")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, helm, append([]string{"--kubeconfig", n.cluster.Kubeconfig}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.Bytes(), err
}

// describeRelease is what a failed install quotes: the release's pods.
func (n *Node) describeRelease(ctx context.Context) string {
	out, _ := n.cluster.Kubectl(ctx, "get", "pods,events", "-n", ReleaseNamespace, "-o", "wide")
	return strings.TrimSpace(string(out))
}
