package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Components a test can hit with a fault (Restart, Pause); each is also the
// name of the component's log file in Dir/logs.
const (
	Etcd              = componentEtcd
	APIServer         = componentAPIServer
	ControllerManager = componentControllerManager
	Scheduler         = componentScheduler
	Kwok              = componentKwok
)

// Restart SIGKILLs the named component, as a crash would, starts it again
// with the same flags, ports and data, and returns once it is ready again
// (etcd healthy, the API server's /readyz passing, the controller manager
// and scheduler serving their health endpoint). It is how a test restarts
// the API server or etcd under load.
func (c *Cluster) Restart(ctx context.Context, name string) error {
	c.mu.Lock()
	i := slices.IndexFunc(c.processes, func(p *process) bool { return p.name == name })
	if i < 0 {
		c.mu.Unlock()
		return fmt.Errorf("restart %s: no such component in this cluster", name)
	}
	old := c.processes[i]
	c.mu.Unlock()

	old.kill()
	started, err := old.again()
	if err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	c.mu.Lock()
	c.processes[i] = started
	c.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("Restarted component", "component", name, "pid", started.cmd.Process.Pid)
	if check, ok := c.readinessOf(name); ok {
		return c.waitFor(ctx, check)
	}
	return nil
}

// readinessOf is what says the named component serves again after a restart.
func (c *Cluster) readinessOf(name string) (readiness, bool) {
	switch name {
	case componentEtcd:
		return etcdHealthy(c.ports), true
	case componentAPIServer:
		return apiserverReady(c.Client), true
	case componentControllerManager:
		return componentHealthy(name, c.ports.controllerManager, "/healthz", c.caPEM), true
	case componentScheduler:
		return componentHealthy(name, c.ports.scheduler, "/readyz", c.caPEM), true
	}
	return readiness{}, false
}

// Pause freezes the named component with SIGSTOP: its sockets stay open but
// nothing answers, as with a process stuck on a slow disk. Resume ends it;
// Stop resumes a paused component before stopping it.
// Pause returns only once every thread of the component is stopped: kill(2)
// returns before a thread running on another core has stopped, and a request
// sent in between could still be served.
func (c *Cluster) Pause(name string) error {
	if err := c.signal(name, syscall.SIGSTOP); err != nil {
		return err
	}
	return c.awaitThreads(name, true)
}

// Resume continues a component frozen by Pause.
func (c *Cluster) Resume(name string) error {
	if err := c.signal(name, syscall.SIGCONT); err != nil {
		return err
	}
	return c.awaitThreads(name, false)
}

// awaitThreads polls /proc until every thread of the component is stopped
// (or, with stopped false, none is), for at most ten seconds.
func (c *Cluster) awaitThreads(name string, stopped bool) error {
	p := c.process(name)
	if p == nil {
		return fmt.Errorf("signal %s: no such component in this cluster", name)
	}
	pid := p.cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		states, err := threadStates(pid)
		if err != nil {
			return fmt.Errorf("%s (pid %d): %w", name, pid, err)
		}
		if allStopped(states) == stopped && (stopped || noneStopped(states)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d): threads %q not all %s after 10s", name, pid, states, map[bool]string{true: "stopped", false: "running"}[stopped])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// threadStates reads the state letter of each of pid's threads.
func threadStates(pid int) ([]byte, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var states []byte
	for _, task := range tasks {
		stat, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // the thread exited
			}
			return nil, err
		}
		state, err := statState(stat)
		if err != nil {
			return nil, err
		}
		states = append(states, state)
	}
	return states, nil
}

// statState is the state field of a /proc/<pid>/stat line: the first field
// after the command name, which is in parentheses and may hold any byte.
func statState(stat []byte) (byte, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0, fmt.Errorf("malformed stat line %q", stat)
	}
	return stat[i+2], nil
}

func allStopped(states []byte) bool {
	for _, s := range states {
		if s != 'T' && s != 't' {
			return false
		}
	}
	return len(states) > 0
}

func noneStopped(states []byte) bool {
	return !slices.ContainsFunc(states, func(s byte) bool { return s == 'T' || s == 't' })
}

func (c *Cluster) signal(name string, sig syscall.Signal) error {
	p := c.process(name)
	if p == nil {
		return fmt.Errorf("signal %s: no such component in this cluster", name)
	}
	if p.exited() {
		return fmt.Errorf("signal %s: %w", name, p.exitError())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("send %v to %s: %w", sig, name, err)
	}
	return nil
}
