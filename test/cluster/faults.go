package cluster

import (
	"context"
	"fmt"
	"slices"
	"syscall"

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
func (c *Cluster) Pause(name string) error { return c.signal(name, syscall.SIGSTOP) }

// Resume continues a component frozen by Pause.
func (c *Cluster) Resume(name string) error { return c.signal(name, syscall.SIGCONT) }

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
