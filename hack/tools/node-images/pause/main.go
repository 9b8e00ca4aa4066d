// Command pause is the sandbox ("pause") container of test/node's pods: it
// holds the pod's namespaces, reaps the zombies of a shared PID namespace
// (it is PID 1 there) and exits on SIGINT or SIGTERM. The upstream image is
// a C program that cannot be built here; this does the same job.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited; one SIGCHLD may stand for several.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
