package harness

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
)

// testNode is a Node of an Env whose binaries are the given shell scripts.
func testNode(t *testing.T, scripts map[string]string) *Node {
	t.Helper()
	dir := t.TempDir()
	e := &Env{Dir: dir, bin: filepath.Join(dir, "bin")}
	must(t, os.MkdirAll(e.bin, 0o755))
	for name, script := range scripts {
		must(t, os.WriteFile(filepath.Join(e.bin, name), []byte("#!/bin/sh\n"+script+"\n"), 0o755))
	}
	return &Node{Name: "node1", env: e, procs: map[string]*process{}, args: map[string][]string{}}
}

func logLines(n *Node, component string) int {
	data, _ := os.ReadFile(n.env.LogPath(n.Name, component))
	return strings.Count(string(data), "started\n")
}

// TestCrashedComponentIsRestarted: a component that exits on its own is
// recorded and started again, as the kubelet restarts a container.
func TestCrashedComponentIsRestarted(t *testing.T) {
	n := testNode(t, map[string]string{"crasher": "echo started; exit 3"})
	must(t, n.start("provisioner", "crasher"))
	t.Cleanup(func() { n.Kill("provisioner") })
	err := cluster.Poll(context.Background(), 50*time.Millisecond, 10*time.Second, func() (bool, error) {
		return logLines(n, "provisioner") >= 3, nil
	})
	if err != nil {
		t.Fatalf("crashing component started %d times, want it restarted again and again: %v", logLines(n, "provisioner"), err)
	}
	exits := n.env.Exits()
	if len(exits) < 2 || exits[0].Component != "provisioner" || !strings.Contains(exits[0].Err.Error(), "exit status 3") {
		t.Fatalf("exits = %v, want the provisioner's exit status 3 recorded", exits)
	}
}

// TestKilledComponentStaysDownUntilRestart: Kill is not a crash; Restart
// brings the component back, and restarting a running one does nothing.
func TestKilledComponentStaysDownUntilRestart(t *testing.T) {
	n := testNode(t, map[string]string{"sleeper": "echo started; exec sleep 60"})
	must(t, n.start("driver", "sleeper"))
	t.Cleanup(func() { n.Kill("driver") })
	waitLines := func(want int) {
		t.Helper()
		if err := cluster.Poll(context.Background(), 20*time.Millisecond, 5*time.Second, func() (bool, error) {
			return logLines(n, "driver") == want, nil
		}); err != nil {
			t.Fatalf("driver started %d times, want %d", logLines(n, "driver"), want)
		}
	}
	waitLines(1)
	must(t, n.Restart("driver")) // running: nothing happens
	n.Kill("driver")
	// A crash restart would come after crashRestartDelay; give it twice that.
	if err := cluster.Poll(context.Background(), 50*time.Millisecond, 2*crashRestartDelay, func() (bool, error) {
		return logLines(n, "driver") > 1, nil
	}); err == nil {
		t.Fatal("a killed component was started again without Restart")
	}
	must(t, n.Restart("driver"))
	waitLines(2)
	if exits := n.env.Exits(); len(exits) != 0 {
		t.Fatalf("a kill was recorded as an exit: %v", exits)
	}
}
