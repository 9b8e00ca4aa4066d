package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

func TestProcessExitIsReportedWithItsLog(t *testing.T) {
	p, err := startProcess("failing", "/bin/sh", []string{"-c", "echo 'flag provided but not defined: -x'; exit 3"}, t.TempDir(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	<-p.done
	msg := p.exitError().Error()
	for _, want := range []string{"failing stopped unexpectedly", "exit status 3", "flag provided but not defined"} {
		if !strings.Contains(msg, want) {
			t.Errorf("exitError() = %q, want it to contain %q", msg, want)
		}
	}
}

func TestStopKillsAProcessThatIgnoresSIGTERM(t *testing.T) {
	p, err := startProcess("stubborn", "/bin/sh", []string{"-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"}, t.TempDir(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	trapped := func(context.Context) (bool, error) { return readTail(p.logPath, 64) == "ready", nil }
	if err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true, trapped); err != nil {
		t.Fatalf("shell never set its trap: %v", err)
	}
	begin := time.Now()
	p.stop(500 * time.Millisecond)
	if !p.exited() {
		t.Fatal("process still running after stop")
	}
	if elapsed := time.Since(begin); elapsed > 5*time.Second {
		t.Errorf("stop took %v", elapsed)
	}
	p.stop(time.Second) // a second stop is a no-op
}

func TestAgainStartsAKilledProcessWithTheSameFlagsAndLog(t *testing.T) {
	p, err := startProcess("echoer", "/bin/sh", []string{"-c", "echo started; while :; do sleep 0.1; done"}, t.TempDir(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	once := func(context.Context) (bool, error) { return readTail(p.logPath, 64) == "started", nil }
	if err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true, once); err != nil {
		t.Fatalf("first run never wrote its line: %v", err)
	}
	p.kill()
	if !p.exited() {
		t.Fatal("process still running after kill")
	}
	again, err := p.again()
	if err != nil {
		t.Fatal(err)
	}
	defer again.stop(time.Second)
	if again.cmd.Process.Pid == p.cmd.Process.Pid || again.exited() {
		t.Fatalf("again() did not start a new running process (pid %d, old %d)", again.cmd.Process.Pid, p.cmd.Process.Pid)
	}
	twice := func(context.Context) (bool, error) { return readTail(again.logPath, 64) == "started\nstarted", nil }
	if err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true, twice); err != nil {
		t.Fatalf("log %s = %q, want both runs' lines appended: %v", again.logPath, readTail(again.logPath, 64), err)
	}
}
