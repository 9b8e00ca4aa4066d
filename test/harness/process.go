package harness

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// crashRestartDelay is how long a component that exited on its own stays
// down before it is started again, as the kubelet restarts a container of a
// DaemonSet pod (which backs off from 10 s; shorter here to keep tests
// short). The node controllers exit when they lose their driver, as
// upstream sidecars do, and count on that restart.
const crashRestartDelay = time.Second

// process is one run of a component.
type process struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed once it has exited and been reaped
	err    error         // how it exited; read after done
	killed bool          // Kill asked for the exit; guarded by Node.mu
}

// Exit is a component exiting on its own, and when.
type Exit struct {
	Node, Component string
	At              time.Time
	Err             error
}

func (x Exit) String() string {
	return fmt.Sprintf("%s/%s exited at %s: %v", x.Node, x.Component, x.At.Format(time.TimeOnly), x.Err)
}

// Exits lists the components that exited without being killed, in order;
// each was started again after crashRestartDelay.
func (e *Env) Exits() []Exit {
	e.exitsMu.Lock()
	defer e.exitsMu.Unlock()
	return slices.Clone(e.exits)
}

func (n *Node) start(component, binary string, args ...string) error {
	if err := os.MkdirAll(filepath.Join(n.env.Dir, n.Name), 0o750); err != nil {
		return err
	}
	logFile, err := os.OpenFile(n.env.LogPath(n.Name, component), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(n.env.bin, binary), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s on %s: %w", component, n.Name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	n.mu.Lock()
	n.args[component] = append([]string{binary}, args...)
	n.procs[component] = p
	n.mu.Unlock()
	go n.supervise(component, p, logFile)
	return nil
}

// supervise reaps p and, unless Kill asked for the exit, records it and
// starts the component again after crashRestartDelay (if nothing else
// started or killed it meanwhile).
func (n *Node) supervise(component string, p *process, logFile *os.File) {
	p.err = p.cmd.Wait()
	logFile.Close()
	close(p.done)
	n.mu.Lock()
	killed := p.killed
	n.mu.Unlock()
	if killed {
		return
	}
	klog.InfoS("Component exited on its own; restarting it as the kubelet would", "node", n.Name, "component", component, "err", p.err, "delay", crashRestartDelay)
	n.env.exitsMu.Lock()
	n.env.exits = append(n.env.exits, Exit{Node: n.Name, Component: component, At: time.Now(), Err: p.err})
	n.env.exitsMu.Unlock()
	time.AfterFunc(crashRestartDelay, func() {
		n.mu.Lock()
		current := n.procs[component]
		args := n.args[component]
		n.mu.Unlock()
		if current != p {
			return // killed or restarted meanwhile
		}
		if err := n.start(component, args[0], args[1:]...); err != nil {
			klog.ErrorS(err, "Restarting a crashed component failed", "node", n.Name, "component", component)
		}
	})
}

// Components names the processes run on this node (for a worker: driver,
// provisioner, snapshotter; for the control plane: extender, webhook).
func (n *Node) Components() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	names := slices.Collect(maps.Keys(n.args))
	slices.Sort(names)
	return names
}

// Kill SIGKILLs a component, as a crash would, and reaps it. It stays down
// until Restart. Killing a component that is not running does nothing.
func (n *Node) Kill(component string) {
	n.mu.Lock()
	p, ok := n.procs[component]
	if ok {
		p.killed = true
		delete(n.procs, component)
	}
	n.mu.Unlock()
	if !ok {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Restart starts a killed (or crashed) component again with the same
// flags; a component that is running is left alone.
func (n *Node) Restart(component string) error {
	n.mu.Lock()
	p, present := n.procs[component]
	args, known := n.args[component]
	n.mu.Unlock()
	if present {
		select {
		case <-p.done:
		default:
			return nil // running
		}
	}
	if !known {
		return fmt.Errorf("restart %s on %s: never started", component, n.Name)
	}
	return n.start(component, args[0], args[1:]...)
}
