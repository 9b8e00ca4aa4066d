package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// logTailBytes bounds how much of a log a failure report quotes.
const logTailBytes = 4 << 10

// process is one running control-plane component.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // how it exited; read only after done is closed
	// How it was started, so that a fault can start it again the same way.
	bin, dir, logDir string
	args, env        []string
}

// startProcess runs bin with args in dir, output appended to logDir/name.log.
// The child gets its own process group, so a terminal's Ctrl-C reaches only
// this process (which stops the children in order), and is killed by the
// kernel when the thread that started it dies, so nothing outlives a crashed
// or killed test. (Pdeathsig follows the starting OS thread; Go keeps that
// thread alive unless a goroutine exits while locked to it.)
func startProcess(name, bin string, args []string, dir, logDir string, env []string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}),
		bin: bin, dir: dir, logDir: logDir, args: args, env: env}
	go func() {
		p.waitErr = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes an ended process, quoting the end of its log.
func (p *process) exitError() error {
	status := "exited"
	if p.waitErr != nil {
		status = p.waitErr.Error()
	}
	return fmt.Errorf("%s stopped unexpectedly (%s)%s", p.name, status, p.logTail())
}

// stop asks the process to terminate and kills it if it is still running
// after grace. It signals only this process, through os.Process, which on
// Linux holds a pidfd, so a recycled pid can never be hit.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	// A paused process (see Cluster.Pause) acts on SIGTERM only once resumed.
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill SIGKILLs the process, as a crash would, and waits until it is reaped.
func (p *process) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// again starts a new process exactly as p was started (same binary, flags,
// environment, directory and log file, appended to).
func (p *process) again() (*process, error) {
	return startProcess(p.name, p.bin, p.args, p.dir, p.logDir, p.env)
}

// logTail returns the last few KiB of the process's log, formatted to follow
// an error message, or "" when the log is empty or unreadable.
func (p *process) logTail() string {
	tail := readTail(p.logPath, logTailBytes)
	if tail == "" {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", p.logPath, tail)
}

// readTail returns up to the last n bytes of the file at path, starting at a
// line boundary.
func readTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return ""
	}
	offset := max(info.Size()-n, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, offset, info.Size()-offset))
	if err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	if offset > 0 {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return strings.TrimRight(string(data), "\n")
}
