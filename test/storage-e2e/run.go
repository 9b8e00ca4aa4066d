package storagee2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
)

// Summary is ginkgo's closing count of a run.
type Summary struct {
	Ran, Total                       int
	Passed, Failed, Pending, Skipped int
	Succeeded                        bool
}

func (s Summary) String() string {
	return fmt.Sprintf("ran %d of %d specs: %d passed, %d failed, %d pending, %d skipped",
		s.Ran, s.Total, s.Passed, s.Failed, s.Pending, s.Skipped)
}

var (
	ranPattern    = regexp.MustCompile(`Ran (\d+) of (\d+) Specs`)
	countsPattern = regexp.MustCompile(`(SUCCESS|FAIL)! (?:- [^\n]*?)?-- (\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)
)

// parseSummary reads ginkgo's summary from a run's output; ok is false
// when the output has none (the suite did not get to the end).
func parseSummary(output []byte) (summary Summary, ok bool) {
	ran := ranPattern.FindAllSubmatch(output, -1)
	counts := countsPattern.FindAllSubmatch(output, -1)
	if len(ran) == 0 || len(counts) == 0 {
		return Summary{}, false
	}
	last := ran[len(ran)-1]
	summary.Ran, _ = strconv.Atoi(string(last[1]))
	summary.Total, _ = strconv.Atoi(string(last[2]))
	line := counts[len(counts)-1]
	summary.Succeeded = string(line[1]) == "SUCCESS"
	summary.Passed, _ = strconv.Atoi(string(line[2]))
	summary.Failed, _ = strconv.Atoi(string(line[3]))
	summary.Pending, _ = strconv.Atoi(string(line[4]))
	summary.Skipped, _ = strconv.Atoi(string(line[5]))
	return summary, true
}

// RunOptions say which specs e2e.test runs, against what.
type RunOptions struct {
	E2ETest    string // the e2e.test binary
	Kubeconfig string
	TestDriver string // testdriver.yaml
	Focus      string // ginkgo regular expression
	Skip       string // ginkgo regular expression; empty skips nothing
	ReportDir  string // junit report and logs
	Output     io.Writer
}

// args are e2e.test's command line. The provider is "local" (a cluster it
// does not create); log dumps of every namespace on a failure stay on, and
// the whole run is bounded by ginkgo's own timeout.
func (o RunOptions) args() []string {
	args := []string{
		"--kubeconfig=" + o.Kubeconfig,
		"--provider=local",
		"--storage.testdriver=" + o.TestDriver,
		"--ginkgo.focus=" + o.Focus,
		"--ginkgo.no-color",
		"--ginkgo.timeout=3h",
		"--ginkgo.v",
		"--report-dir=" + o.ReportDir,
		"--disable-log-dump",
	}
	if o.Skip != "" {
		args = append(args, "--ginkgo.skip="+o.Skip)
	}
	return args
}

// Run runs e2e.test and returns ginkgo's summary; err is set when the
// suite did not end with a summary (it crashed or was stopped). A run with
// failed specs returns its summary and no error: the caller judges it.
func Run(ctx context.Context, opts RunOptions) (Summary, []byte, error) {
	cmd := exec.CommandContext(ctx, opts.E2ETest, opts.args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// One comparable writer for both streams: exec then writes from one
	// goroutine at a time.
	tee := &teeWriter{out: opts.Output}
	cmd.Stdout, cmd.Stderr = tee, tee
	runErr := cmd.Run()
	summary, ok := parseSummary(tee.captured.Bytes())
	if !ok {
		return Summary{}, tee.captured.Bytes(), fmt.Errorf("e2e.test ended without ginkgo's summary: %w", runErr)
	}
	return summary, tee.captured.Bytes(), nil
}

// teeWriter keeps what it writes on.
type teeWriter struct {
	out      io.Writer
	captured bytes.Buffer
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.captured.Write(p)
	return t.out.Write(p)
}
