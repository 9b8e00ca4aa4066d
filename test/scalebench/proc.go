package scalebench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// running is one started process.
type running struct {
	Process
	at      Where
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once it exited and was reaped
	err     error         // its exit; read after done
}

// startProcess runs binary with p's flags, logging to logPath. The process
// is killed if the bench dies (Pdeathsig), and only ever signalled by its pid.
func startProcess(p Process, binary string, at Where, logPath string) (*running, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, append(p.Args(at), "--v=2")...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	r := &running{Process: p, at: at, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		logFile.Close()
		close(r.done)
	}()
	return r, nil
}

// exited reports whether the process is gone, and how it ended.
func (r *running) exited() (bool, error) {
	select {
	case <-r.done:
		return true, r.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (r *running) stop(grace time.Duration) {
	if gone, _ := r.exited(); gone {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(grace):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// waitReady polls the process's Ready path until it answers 200. It fails
// at once if the process exits, quoting the end of its log.
func (r *running) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	url := "http://" + r.at.Metrics + r.Ready
	var last string
	for {
		if gone, err := r.exited(); gone {
			return fmt.Errorf("%s exited before it was ready (%w); end of %s:\n%s", r.Name, err, r.logPath, logTail(r.logPath, 3000))
		}
		status, err := get(ctx, url)
		if err == nil && status == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("HTTP %d", status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (%s: %s); end of %s:\n%s", r.Name, timeout, url, last, r.logPath, logTail(r.logPath, 3000))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// get returns the status of a GET of url.
func get(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return 0, err
	}
	defer response.Body.Close()
	_, _ = io.Copy(io.Discard, response.Body)
	return response.StatusCode, nil
}

// memory is what the kernel says a process holds.
type memory struct {
	// rss is resident memory now (VmRSS); peak is its high-water mark
	// since the process started (VmHWM), what a memory limit must allow.
	rss, peak int64
}

// readMemory reads VmRSS and VmHWM from /proc/<pid>/status.
func readMemory(pid int) (memory, error) {
	file, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer file.Close()
	return parseStatus(file)
}

// parseStatus reads VmRSS and VmHWM (in kB) from a /proc/<pid>/status.
func parseStatus(r io.Reader) (memory, error) {
	var m memory
	scanner := bufio.NewScanner(r)
	for scanner.Scan() {
		key, value, ok := strings.Cut(scanner.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) != 2 || fields[1] != "kB" {
			return m, fmt.Errorf("unexpected %s line %q", key, scanner.Text())
		}
		kib, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", key, err)
		}
		if key == "VmRSS" {
			m.rss = kib << 10
		} else {
			m.peak = kib << 10
		}
	}
	if err := scanner.Err(); err != nil {
		return m, err
	}
	if m.rss == 0 || m.peak == 0 {
		return m, errors.New("no VmRSS or VmHWM in /proc/<pid>/status")
	}
	return m, nil
}

// logTail is the last n bytes of the file at path.
func logTail(path string, n int64) string {
	file, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer file.Close()
	if info, err := file.Stat(); err == nil && info.Size() > n {
		_, _ = file.Seek(-n, io.SeekEnd)
	}
	data, _ := io.ReadAll(file)
	return string(data)
}
