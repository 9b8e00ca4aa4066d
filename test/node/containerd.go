package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"text/template"
	"time"
)

// k8sNamespace is containerd's namespace for the CRI (the kubelet's) images
// and containers.
const k8sNamespace = "k8s.io"

// containerdConfig is containerd 1.6's config (version 2) for the node:
// everything under the node's directory, the CRI plugin with runc and the
// CNI plugins of Debian's package, the sandbox image we import.
//
// restrict_oom_score_adj: this VM removes CAP_SYS_RESOURCE from every
// process, so runc cannot lower a container's OOM score below its parent's;
// without this every sandbox fails with "can't get final child's PID from
// pipe". Cgroups are v1 here, driven by cgroupfs, like the kubelet's.
var containerdConfig = template.Must(template.New("containerd").Parse(`version = 2
root = "{{.Root}}"
state = "{{.State}}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{{.Opt}}"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{{.SandboxImage}}"
    restrict_oom_score_adj = true
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{{.CNIBinDir}}"
      conf_dir = "{{.CNIConfDir}}"
`))

// containerdSettings fill containerdConfig.
type containerdSettings struct {
	Root, State, Socket, Opt string
	SandboxImage             string
	CNIBinDir, CNIConfDir    string
}

func renderContainerdConfig(s containerdSettings) ([]byte, error) {
	var buf bytes.Buffer
	if err := containerdConfig.Execute(&buf, s); err != nil {
		return nil, fmt.Errorf("render containerd config: %w", err)
	}
	return buf.Bytes(), nil
}

// waitForSocket waits until something accepts connections on a unix socket,
// or the process that should serve it exits.
func waitForSocket(ctx context.Context, path string, p *process) error {
	for {
		conn, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			_ = conn.Close()
			return nil
		}
		if p.exited() {
			return p.exitError()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never served %s: %w%s", p.name, path, ctx.Err(), p.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ctrTimeout bounds one ctr call: a call to a wedged shim must not hang
// the node's Stop.
const ctrTimeout = 20 * time.Second

// ctr runs containerd's ctr against the node's containerd in the CRI
// namespace and returns its output.
func ctr(ctx context.Context, socket string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ctrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", socket, "--namespace", k8sNamespace}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// importImage loads a `docker save` or OCI archive into the CRI namespace
// under the names it carries, where the kubelet finds it without pulling.
func importImage(ctx context.Context, socket, tarball string) error {
	if _, err := os.Stat(tarball); err != nil {
		return fmt.Errorf("image archive: %w", err)
	}
	_, err := ctr(ctx, socket, "images", "import", tarball)
	return err
}

// taskStatuses maps each task of the CRI namespace to its status
// (RUNNING, STOPPED, ...).
func taskStatuses(ctx context.Context, socket string) (map[string]string, error) {
	out, err := ctr(ctx, socket, "tasks", "list")
	if err != nil {
		return nil, err
	}
	statuses := map[string]string{}
	for i, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if i == 0 || len(fields) < 3 { // header: TASK PID STATUS
			continue
		}
		statuses[fields[0]] = fields[2]
	}
	return statuses, nil
}

// killTasks kills and deletes every task and container left in the CRI
// namespace (the shims outlive containerd, so they go first), polling
// with a deadline for the kills to land.
func killTasks(ctx context.Context, socket string) error {
	statuses, err := taskStatuses(ctx, socket)
	if err != nil {
		return err
	}
	for id, status := range statuses {
		if status != "STOPPED" {
			_, _ = ctr(ctx, socket, "tasks", "kill", "--all", "--signal", "SIGKILL", id)
		}
	}
	var errs []error
	deadline := time.Now().Add(30 * time.Second)
	for id := range statuses {
		for {
			_, err := ctr(ctx, socket, "tasks", "delete", id)
			if err == nil || strings.Contains(err.Error(), "not found") {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, err)
				break
			}
			time.Sleep(200 * time.Millisecond) // the kill lands asynchronously; bounded by the deadline
		}
	}
	out, err := ctr(ctx, socket, "containers", "list", "--quiet")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, id := range strings.Fields(string(out)) {
		if _, err := ctr(ctx, socket, "containers", "delete", id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
