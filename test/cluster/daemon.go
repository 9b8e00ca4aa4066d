package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

const (
	// serveVerb must be an argument of the command Up runs; Down checks for
	// it (and the directory) before signalling a pid read from a file.
	serveVerb    = "serve"
	serveLogName = "serve.log"
	upTimeout    = 5 * time.Minute
	downTimeout  = time.Minute
)

// Serve runs a cluster as opts says until ctx ends, then stops it: the body of
// the detached process that Up starts. It writes its pid to Dir/pid before
// starting, so Down can stop it at any point, and creates Dir/ready once the
// cluster is usable.
func Serve(ctx context.Context, opts Options) error {
	if opts.Dir == "" {
		return errors.New("serve: no directory given")
	}
	l := layout{opts.Dir}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", l.dir, err)
	}
	if err := os.WriteFile(l.pidFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	defer os.Remove(l.pidFile())
	c, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := os.WriteFile(l.readyFile(), []byte(c.Kubeconfig+"\n"), 0o644); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	defer os.Remove(l.readyFile())
	klog.FromContext(ctx).Info("Serving cluster until SIGTERM", "dir", l.dir)
	<-ctx.Done()
	return nil
}

// Up starts serve, the command line of a process that runs Serve for the
// absolute directory dir, in a session of its own so that it outlives the
// caller, and waits until its cluster is usable. It returns the admin
// kubeconfig's path. Stale files of a cluster that died are removed first;
// a cluster still running in dir is an error. The process's output goes to
// dir/logs/serve.log.
func Up(ctx context.Context, dir string, serve []string) (string, error) {
	l := layout{dir}
	if err := checkServeCommand(dir, serve); err != nil {
		return "", err
	}
	if proc, ok := findServe(l); ok {
		return "", fmt.Errorf("a cluster already runs in %s (pid %d): run down first", dir, proc.Pid)
	}
	if err := l.clean(); err != nil {
		return "", fmt.Errorf("remove stale cluster files: %w", err)
	}
	cmd, exited, err := startDetached(l, serve)
	if err != nil {
		return "", err
	}
	if err := waitServeReady(ctx, l, exited); err != nil {
		// Do not leave a half-started cluster behind.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return "", err
	}
	if err := checkNodesUsable(ctx, l); err != nil {
		return "", fmt.Errorf("cluster in %s is up (stop it with down) but not usable: %w", dir, err)
	}
	return l.adminKubeconfig(), nil
}

// Down stops the cluster that Up started in dir, if one runs (SIGTERM, then
// SIGKILL after a minute), and removes its files.
func Down(ctx context.Context, dir string) error {
	l := layout{dir}
	if proc, ok := findServe(l); ok {
		if err := stopServe(ctx, proc); err != nil {
			return err
		}
	}
	return l.clean()
}

// checkServeCommand makes sure Down will recognise the process Up starts.
func checkServeCommand(dir string, serve []string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("cluster directory %q is not absolute", dir)
	}
	if len(serve) == 0 || !isServeCommand(serve, dir) {
		return fmt.Errorf("serve command %q must contain %q and the directory %s", serve, serveVerb, dir)
	}
	return nil
}

// startDetached starts serve in a new session, with no parent-death signal,
// and returns a channel closed when it exits.
func startDetached(l layout, serve []string) (*exec.Cmd, <-chan struct{}, error) {
	if err := os.MkdirAll(l.logs(), 0o755); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", l.logs(), err)
	}
	logFile, err := os.OpenFile(filepath.Join(l.logs(), serveLogName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open serve log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(serve[0], serve[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", serve[0], err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return cmd, exited, nil
}

// waitServeReady waits for Serve's ready file, failing as soon as the
// process exits.
func waitServeReady(ctx context.Context, l layout, exited <-chan struct{}) error {
	err := wait.PollUntilContextTimeout(ctx, pollInterval, upTimeout, true, func(context.Context) (bool, error) {
		select {
		case <-exited:
			return false, errors.New("the cluster process exited")
		default:
		}
		_, err := os.Stat(l.readyFile())
		return err == nil, nil
	})
	if err != nil {
		// The serve log ends with Start's error, which quotes a component's log.
		tail := readTail(filepath.Join(l.logs(), serveLogName), 8*logTailBytes)
		return fmt.Errorf("start cluster in %s: %w\n--- last lines of %s ---\n%s", l.dir, err, serveLogName, tail)
	}
	return nil
}

// checkNodesUsable confirms, through the kubeconfig, that every node is Ready.
func checkNodesUsable(ctx context.Context, l layout) error {
	c := &Cluster{Kubeconfig: l.adminKubeconfig()}
	if err := c.connect(); err != nil {
		return err
	}
	list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var problems []error
	for _, node := range list.Items {
		if problem := nodeProblem(list.Items, node.Name); problem != "" {
			problems = append(problems, errors.New(problem))
		}
	}
	return errors.Join(problems...)
}

// findServe returns the process recorded in l's pid file if it is alive and
// is the serve process of this directory. The handle is taken before the
// check (on Linux it holds a pidfd), so a pid recycled since can never be
// signalled through it.
func findServe(l layout) (*os.Process, bool) {
	data, err := os.ReadFile(l.pidFile())
	if err != nil {
		return nil, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return nil, false
	}
	proc, err := os.FindProcess(pid)
	if err != nil || !processAlive(pid) {
		return nil, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if !isServeCommand(args, l.dir) {
		_ = proc.Release()
		return nil, false
	}
	return proc, true
}

// isServeCommand reports whether args run the serve verb for dir.
func isServeCommand(args []string, dir string) bool {
	return slices.Contains(args, serveVerb) && slices.ContainsFunc(args, func(arg string) bool {
		return arg == dir || strings.HasSuffix(arg, "="+dir)
	})
}

// stopServe sends SIGTERM to the serve process and waits for it to exit,
// killing it if it takes longer than downTimeout; its cluster's processes
// die with it.
func stopServe(ctx context.Context, proc *os.Process) error {
	defer proc.Release()
	if err := proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop cluster process %d: %w", proc.Pid, err)
	}
	gone := func(context.Context) (bool, error) { return !processAlive(proc.Pid), nil }
	if err := wait.PollUntilContextTimeout(ctx, pollInterval, downTimeout, true, gone); err == nil {
		return nil
	}
	if err := proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill cluster process %d: %w", proc.Pid, err)
	}
	if err := wait.PollUntilContextTimeout(ctx, pollInterval, downTimeout, true, gone); err != nil {
		return fmt.Errorf("wait for cluster process %d to exit: %w", proc.Pid, err)
	}
	return nil
}

// processAlive reports whether pid is a running (not zombie) process. It
// reads /proc rather than signalling, because a zombie that nobody reaps
// (no init in a container) still accepts signals.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}
