package node

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/toposnap/toposnap/test/cluster"
)

// Environment variables that point at prebuilt inputs instead of running
// the scripts that build them.
const (
	// EnvNodeBinDir: where kubelet (and e2e.test) are; else
	// hack/build-node-bins.sh's cache.
	EnvNodeBinDir = "TOPOSNAP_NODE_BIN"
	// EnvNodeImagesDir: the output of hack/node-images.sh; else it runs.
	EnvNodeImagesDir = "TOPOSNAP_NODE_IMAGES"
)

// runScript runs a script of the repository with env added and returns the
// last line it printed (the scripts print their output directory last);
// their progress goes to stderr.
func runScript(script string, env ...string) (string, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, script))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("run %s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return "", fmt.Errorf("%s printed nothing", script)
	}
	return last, nil
}

// NodeBinDir returns the directory holding kubelet and e2e.test, building
// the ones named in which (e.g. "kubelet", "e2e.test") when missing.
func NodeBinDir(which ...string) (string, error) {
	if dir := os.Getenv(EnvNodeBinDir); dir != "" {
		return dir, nil
	}
	return runScript("hack/build-node-bins.sh", "NODE_BINS="+strings.Join(which, " "))
}

// setupHost installs what the node needs from the host's packages
// (hack/node-setup.sh; quick when all is there).
func setupHost() error {
	_, err := runScript("hack/node-setup.sh")
	return err
}

// nodeImages returns the image tarballs of hack/node-images.sh by reference.
func nodeImages(clusterBinDir string) (map[string]string, error) {
	dir := os.Getenv(EnvNodeImagesDir)
	if dir == "" {
		var err error
		if dir, err = runScript("hack/node-images.sh", "CLUSTER_BIN_DIR="+clusterBinDir); err != nil {
			return nil, err
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, "images.json"))
	if err != nil {
		return nil, fmt.Errorf("node images index: %w", err)
	}
	images := map[string]string{}
	if err := json.Unmarshal(data, &images); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, "images.json"), err)
	}
	return images, nil
}
