package interop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// envSidecarBin, when set, says where the sidecar binaries are instead of
// running the build script.
const envSidecarBin = "TOPOSNAP_SIDECARS_BIN"

// The upstream binaries, as hack/build-sidecars.sh names them.
const (
	binProvisioner        = "csi-provisioner"
	binSnapshotter        = "csi-snapshotter"
	binSnapshotController = "snapshot-controller"
)

// sidecarBinDir returns the directory of the sidecar binaries:
// $TOPOSNAP_SIDECARS_BIN if set, else the last line printed by
// hack/build-sidecars.sh, which builds whatever is missing first (minutes
// the first time, then cached). The script's progress goes to stderr.
func sidecarBinDir() (string, error) {
	if dir := os.Getenv(envSidecarBin); dir != "" {
		return dir, nil
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, "hack", "build-sidecars.sh"))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("run hack/build-sidecars.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	for _, name := range []string{binProvisioner, binSnapshotter, binSnapshotController} {
		if info, err := os.Stat(filepath.Join(dir, name)); err != nil || info.Mode().Perm()&0o111 == 0 {
			return "", fmt.Errorf("hack/build-sidecars.sh printed %q, which holds no executable %s", dir, name)
		}
	}
	return dir, nil
}

// provisionerArgs are csi-provisioner's flags beside one node's driver:
// node deployment (it provisions only claims whose selected node is its
// own, and reads topology from its own driver instead of CSINode
// objects), strict topology (CreateVolume is asked for the selected node's
// segment only: the driver answers with the volume's own, the node or the
// zone, which becomes the PV's affinity) and no aggregated topology for
// immediate claims, both as its README recommends for node deployment.
// A restore claim deleted after its CreateVolume failed leaves
// external-provisioner's source-protection finalizer on the VolumeSnapshot
// until a periodic sweep (5 minutes by default) removes it; the sweep runs
// every 10 s here so that tests see the snapshot go within their deadlines.
func provisionerArgs(kubeconfig, socket string) []string {
	return []string{"--kubeconfig=" + kubeconfig, "--csi-address=" + socket, "--node-deployment",
		"--feature-gates=Topology=true", "--strict-topology", "--immediate-topology=false",
		"--snapshot-orphan-sweep-interval=10s", "--v=2"}
}

// snapshotterArgs are csi-snapshotter's flags beside one node's driver: it
// cuts the snapshots that the snapshot-controller assigned to its node.
// Group snapshots are off: toposnap's driver has no group controller and
// the cluster has no group snapshot CRDs.
func snapshotterArgs(kubeconfig, socket string) []string {
	return []string{"--kubeconfig=" + kubeconfig, "--csi-address=" + socket, "--node-deployment",
		"--feature-gates=CSIVolumeGroupSnapshot=false", "--v=2"}
}

// snapshotControllerArgs are the snapshot-controller's flags: distributed
// snapshotting labels each content with a node its source PV is reachable
// from, for that node's csi-snapshotter.
func snapshotControllerArgs(kubeconfig string) []string {
	return []string{"--kubeconfig=" + kubeconfig, "--enable-distributed-snapshotting",
		"--feature-gates=CSIVolumeGroupSnapshot=false", "--v=2"}
}

// envUpstreamLimits, when set to "QPS,BURST", gives every upstream process
// those client-side API rate limits instead of its defaults (5 and 10), to
// compare the contenders at equal limits (toposnap's default to 20 and 50).
const envUpstreamLimits = "TOPOSNAP_INTEROP_UPSTREAM_API_LIMITS"

// upstreamLimitArgs are the flags envUpstreamLimits asks for.
func upstreamLimitArgs() ([]string, error) {
	value := os.Getenv(envUpstreamLimits)
	if value == "" {
		return nil, nil
	}
	qps, burst, ok := strings.Cut(value, ",")
	if _, err := strconv.ParseFloat(qps, 64); !ok || err != nil {
		return nil, fmt.Errorf("%s=%q: want QPS,BURST", envUpstreamLimits, value)
	}
	if _, err := strconv.Atoi(burst); err != nil {
		return nil, fmt.Errorf("%s=%q: want QPS,BURST", envUpstreamLimits, value)
	}
	return []string{"--kube-api-qps=" + qps, "--kube-api-burst=" + burst}, nil
}

// sidecar is one run of an upstream process.
type sidecar struct {
	node, name, logPath string
	cmd                 *exec.Cmd
	done                chan struct{} // closed once it has exited and been reaped
	err                 error         // how it exited; read after done
	stopping            atomic.Bool   // stop asked for the exit
}

// startSidecar runs binary from dir with args and extra environment, its
// output appended to <env.Dir>/<node>/<name>.log beside the harness's logs.
func startSidecar(e *harness.Env, dir, node, name string, environ []string, args ...string) (*sidecar, error) {
	logPath := e.LogPath(node, name)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o750); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(dir, name), args...)
	cmd.Env = append(os.Environ(), environ...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A test binary that dies must not leave sidecars acting on the next
	// run's cluster.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s on %s: %w", name, node, err)
	}
	s := &sidecar{node: node, name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		logFile.Close()
		close(s.done)
	}()
	return s, nil
}

// stop asks the process to exit (SIGTERM), kills it after a grace period
// and reaps it.
func (s *sidecar) stop() {
	s.stopping.Store(true)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// crashed says why the process exited if it did so on its own, quoting
// the end of its log.
func (s *sidecar) crashed() error {
	select {
	case <-s.done:
	default:
		return nil
	}
	if s.stopping.Load() {
		return nil
	}
	cause := s.err
	if cause == nil {
		cause = errors.New("exit status 0")
	}
	return fmt.Errorf("%s on %s exited on its own (%w); end of %s:\n%s", s.name, s.node, cause, s.logPath, logTail(s.logPath, 20))
}

// waitLog waits until the process's log holds line, or it exits, or the
// timeout passes.
func (s *sidecar) waitLog(ctx context.Context, line string, timeout time.Duration) error {
	err := poll(ctx, 100*time.Millisecond, timeout, func() (bool, error) {
		if err := s.crashed(); err != nil {
			return false, err
		}
		data, err := os.ReadFile(s.logPath)
		return err == nil && bytes.Contains(data, []byte(line)), nil
	})
	if err != nil {
		return fmt.Errorf("%s on %s did not log %q: %w; end of %s:\n%s", s.name, s.node, line, err, s.logPath, logTail(s.logPath, 20))
	}
	return nil
}

// logTail returns the last n lines of a log file.
func logTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Which controllers act on the drivers' volumes and snapshots.
type controllerKind string

const (
	toposnapControllers controllerKind = "toposnap"
	upstreamControllers controllerKind = "upstream"
	// candidateControllers are toposnap's provisioner and snapshotter built
	// from another tree ($TOPOSNAP_INTEROP_CANDIDATE names the directory of
	// their binaries), run with the harness's flags: a change to them can be
	// measured against both contenders before it lands (docs/interop.md).
	candidateControllers controllerKind = "candidate"
)

// envCandidateBin names the directory of a candidate build of
// toposnap-provisioner and toposnap-snapshotter.
const envCandidateBin = "TOPOSNAP_INTEROP_CANDIDATE"

// switcher runs one kind of provisioner (and one kind of snapshotter) on
// env's nodes at a time, never two: both would act on the same claims
// (snapshots). The drivers are never touched, so a benchmark compares the
// controllers on the same drivers.
type switcher struct {
	env            *harness.Env
	bin            string   // the sidecars
	upstreamLimits []string // extra flags of every upstream process ($TOPOSNAP_INTEROP_UPSTREAM_API_LIMITS)
	candidateBin   string   // empty: no candidate

	mu           sync.Mutex
	provisioner  controllerKind
	snapshotter  controllerKind
	provisioners []*sidecar // the upstream or candidate provisioners running
	snapshotters []*sidecar // the upstream or candidate snapshotters (and snapshot-controller) running
	// controllerStopped: toposnap-controller is down (followController).
	controllerStopped bool
}

// newSwitcher starts as the harness does: toposnap's controllers run.
func newSwitcher(e *harness.Env, bin string) (*switcher, error) {
	limits, err := upstreamLimitArgs()
	if err != nil {
		return nil, err
	}
	return &switcher{env: e, bin: bin, upstreamLimits: limits, candidateBin: os.Getenv(envCandidateBin),
		provisioner: toposnapControllers, snapshotter: toposnapControllers}, nil
}

// Lines the upstream processes log once their controllers start, past
// their start-up checks of the driver and the API (pinned versions:
// sig-storage-lib-external-provisioner v13 and external-snapshotter v8).
const (
	provisionerStarted        = "Started provisioner controller"
	snapshotterStarted        = "Starting CSI snapshotter"
	snapshotControllerStarted = "Starting snapshot controller"
)

// candidateArgs are the flags the harness runs toposnap's component with
// on a node (test/harness/harness.go), for a candidate build.
func candidateArgs(e *harness.Env, node, component string) []string {
	args := []string{"--csi-address", e.Nodes[node].Socket, "--node-name", node, "--kubeconfig", e.Cluster.Kubeconfig, "--v", "2"}
	if component == "provisioner" {
		return append(args, "--capacity-namespace", "default", "--capacity-interval", "2s", "--orphan-interval", "5s", "--orphan-grace", "30s")
	}
	return append(args, "--common-controller")
}

// useProvisioners makes kind the provisioner on every node.
func (s *switcher) useProvisioners(ctx context.Context, kind controllerKind) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.provisioner == kind {
		return nil
	}
	if kind == candidateControllers && s.candidateBin == "" {
		return fmt.Errorf("no candidate build: set %s", envCandidateBin)
	}
	if err := s.followController(ctx, kind == toposnapControllers || s.snapshotter == toposnapControllers); err != nil {
		return err
	}
	// Stop the running kind first: two provisioners must never overlap.
	if s.provisioner == toposnapControllers {
		for _, node := range s.env.AllNodes() {
			node.Kill("provisioner")
		}
	}
	for _, p := range s.provisioners {
		p.stop()
	}
	s.provisioners = nil
	s.provisioner = ""
	for _, name := range s.env.Workers() {
		var p *sidecar
		var err error
		switch kind {
		case toposnapControllers:
			err = s.env.Nodes[name].Restart("provisioner")
		case upstreamControllers:
			p, err = startSidecar(s.env, s.bin, name, binProvisioner, []string{"NODE_NAME=" + name},
				append(provisionerArgs(s.env.Cluster.Kubeconfig, s.env.Nodes[name].Socket), s.upstreamLimits...)...)
		case candidateControllers:
			p, err = startSidecar(s.env, s.candidateBin, name, "toposnap-provisioner", nil, candidateArgs(s.env, name, "provisioner")...)
		}
		if err != nil {
			return err
		}
		if p != nil {
			s.provisioners = append(s.provisioners, p)
		}
	}
	if kind == upstreamControllers {
		for _, p := range s.provisioners {
			if err := p.waitLog(ctx, provisionerStarted, time.Minute); err != nil {
				return err
			}
		}
	}
	s.provisioner = kind
	return nil
}

// useSnapshotters makes kind the snapshot controller and the node
// snapshotters.
func (s *switcher) useSnapshotters(ctx context.Context, kind controllerKind) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snapshotter == kind {
		return nil
	}
	if kind == candidateControllers && s.candidateBin == "" {
		return fmt.Errorf("no candidate build: set %s", envCandidateBin)
	}
	if err := s.followController(ctx, kind == toposnapControllers || s.provisioner == toposnapControllers); err != nil {
		return err
	}
	if s.snapshotter == toposnapControllers {
		for _, node := range s.env.AllNodes() {
			node.Kill("snapshotter")
		}
	}
	for _, p := range s.snapshotters {
		p.stop()
	}
	s.snapshotters = nil
	s.snapshotter = ""
	kubeconfig := s.env.Cluster.Kubeconfig
	if kind == upstreamControllers {
		controller, err := startSidecar(s.env, s.bin, "control-plane", binSnapshotController, nil,
			append(snapshotControllerArgs(kubeconfig), s.upstreamLimits...)...)
		if err != nil {
			return err
		}
		s.snapshotters = append(s.snapshotters, controller)
	}
	for _, name := range s.env.Workers() {
		var p *sidecar
		var err error
		switch kind {
		case toposnapControllers:
			err = s.env.Nodes[name].Restart("snapshotter")
		case upstreamControllers:
			p, err = startSidecar(s.env, s.bin, name, binSnapshotter, []string{"NODE_NAME=" + name},
				append(snapshotterArgs(kubeconfig, s.env.Nodes[name].Socket), s.upstreamLimits...)...)
		case candidateControllers:
			p, err = startSidecar(s.env, s.candidateBin, name, "toposnap-snapshotter", nil, candidateArgs(s.env, name, "snapshotter")...)
		}
		if err != nil {
			return err
		}
		if p != nil {
			s.snapshotters = append(s.snapshotters, p)
		}
	}
	if kind == upstreamControllers {
		for _, p := range s.snapshotters {
			line := snapshotterStarted
			if p.name == binSnapshotController {
				line = snapshotControllerStarted
			}
			if err := p.waitLog(ctx, line, time.Minute); err != nil {
				return err
			}
		}
	}
	s.snapshotter = kind
	return nil
}

// followController runs toposnap-controller while toposnap's own
// provisioners or snapshotters do (routed, they need it), and stops it
// before only upstream or candidate ones run: its snapshot binder and its
// release of source protection must not run beside theirs.
func (s *switcher) followController(ctx context.Context, want bool) error {
	switch {
	case want && s.controllerStopped:
		if err := s.env.StartController(ctx); err != nil {
			return err
		}
	case !want && !s.controllerStopped:
		s.env.StopController()
	}
	s.controllerStopped = !want
	return nil
}

// crashed reports every process of the switcher's that exited on its own.
func (s *switcher) crashed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, p := range append(append([]*sidecar{}, s.provisioners...), s.snapshotters...) {
		errs = append(errs, p.crashed())
	}
	return errors.Join(errs...)
}

// stop stops every process the switcher started (at the end of the run).
func (s *switcher) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range append(append([]*sidecar{}, s.provisioners...), s.snapshotters...) {
		p.stop()
	}
	s.provisioners, s.snapshotters = nil, nil
}

// TestSidecarsArePinnedAndTakeTheirFlags: each built sidecar reports the
// version its tools module pins, and parses the flags this package runs it
// with (an unknown flag or feature gate exits with an error before the
// version is printed).
func TestSidecarsArePinnedAndTakeTheirFlags(t *testing.T) {
	if sidecarBin == "" {
		t.Skip("needs the sidecar binaries (not built with -short)")
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		binary, toolsDir, module string
		args                     []string
	}{
		{binProvisioner, "external-provisioner", "github.com/kubernetes-csi/external-provisioner/v6", provisionerArgs("/kubeconfig", "/csi.sock")},
		{binSnapshotter, "external-snapshotter", "github.com/kubernetes-csi/external-snapshotter/v8", snapshotterArgs("/kubeconfig", "/csi.sock")},
		{binSnapshotController, "external-snapshotter", "github.com/kubernetes-csi/external-snapshotter/v8", snapshotControllerArgs("/kubeconfig")},
	}
	for _, tc := range cases {
		t.Run(tc.binary, func(t *testing.T) {
			list := exec.Command("go", "list", "-m", "-f", "{{.Version}}", tc.module)
			list.Dir = filepath.Join(root, "hack", "tools", "sidecars", tc.toolsDir)
			pinned, err := list.Output()
			if err != nil {
				t.Fatalf("go list %s in hack/tools/sidecars/%s: %v", tc.module, tc.toolsDir, err)
			}
			cmd := exec.Command(filepath.Join(sidecarBin, tc.binary), append(tc.args, "--version")...)
			cmd.Env = append(os.Environ(), "NODE_NAME=node1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s %v --version: %v\n%s", tc.binary, tc.args, err, out)
			}
			if want := strings.TrimSpace(string(pinned)); !strings.Contains(string(out), want) {
				t.Fatalf("%s --version says %q, its tools module pins %s", tc.binary, strings.TrimSpace(string(out)), want)
			}
		})
	}
}
