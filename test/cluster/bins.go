package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvBinDir names the environment variable that, when set, says where the
// control-plane binaries are, instead of building them.
const EnvBinDir = "TOPOSNAP_CLUSTER_BIN"

const (
	modulePath      = "github.com/toposnap/toposnap"
	buildScript     = "hack/build-cluster-bins.sh"
	kwokStagesDir   = "kwok-stages"
	kustomizationFn = "kustomization.yaml"
)

// requiredBinaries must all be in a bin directory.
var requiredBinaries = []string{
	componentEtcd, componentAPIServer, componentControllerManager,
	componentScheduler, componentKwok, binKubectl,
}

// BinDir returns the directory of the control-plane binaries: $TOPOSNAP_CLUSTER_BIN
// if set, else the last line printed by the repository's
// hack/build-cluster-bins.sh, which builds whatever is missing first (minutes
// the first time, then cached). The script's progress goes to stderr.
func BinDir() (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, buildScript))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("run %s: %w", buildScript, err)
	}
	dir := lastLine(out)
	if dir == "" {
		return "", fmt.Errorf("%s printed no bin directory", buildScript)
	}
	return dir, nil
}

// RepoRoot returns the root of the toposnap repository: the nearest
// directory, from the working directory up, whose go.mod declares the module.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	return findModuleRoot(wd, modulePath)
}

// findModuleRoot walks up from start to the directory whose go.mod declares module.
func findModuleRoot(start, module string) (string, error) {
	for dir := start; ; dir = filepath.Dir(dir) {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && moduleName(data) == module {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod of module %s in %s or above", module, start)
		}
	}
}

// moduleName returns the path in a go.mod's module directive, or "".
func moduleName(gomod []byte) string {
	scanner := bufio.NewScanner(bytes.NewReader(gomod))
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) >= 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`)
		}
	}
	return ""
}

// lastLine returns the last non-blank line of out, trimmed.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// checkBinDir reports every required binary that dir lacks.
func checkBinDir(dir string) error {
	var errs []error
	for _, name := range requiredBinaries {
		info, err := os.Stat(filepath.Join(dir, name))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("missing %s: %w", name, err))
		case info.IsDir() || info.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s is not an executable file", name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bin directory %s: %w", dir, err)
	}
	return nil
}

// kwokStageFiles lists the kwok Stage files under dir/kwok-stages, leaving
// out the kustomization files that ship beside them.
func kwokStageFiles(dir string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, kwokStagesDir, "*", "*", "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("list kwok stages: %w", err)
	}
	var stages []string
	for _, path := range matches {
		if filepath.Base(path) != kustomizationFn {
			stages = append(stages, path)
		}
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no kwok stage files in %s", filepath.Join(dir, kwokStagesDir))
	}
	return stages, nil
}
