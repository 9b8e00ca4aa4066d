package tenantops

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// A test makes its tenant's calls as the tenant: its own binary re-executed
// as another user (Tenant, Run), which answers one action (ServeOr) and exits.

// Request is what a test asks its tenant to do; which fields count is up to
// the action.
type Request struct {
	// Path is where the action happens, inside the tenant's volume.
	Path string
	// Size is how much a write writes at most.
	Size int64
	// Inherit is the qgroup inheritance list a create passes (empty: a
	// zeroed btrfs_qgroup_inherit).
	Inherit []uint64
	// Source is the subvolume a snapshot snapshots.
	Source string
}

// Result is what the tenant did: how much it wrote and how its last call
// failed.
type Result struct {
	Written int64
	Errno   int
	Err     string
}

// Failure is the tenant's failure as its process told it, nil if none: the
// message, and the errno for errors.Is.
func (r Result) Failure() error {
	if r.Err == "" {
		return nil
	}
	return tenantError{message: r.Err, errno: syscall.Errno(r.Errno)}
}

type tenantError struct {
	message string
	errno   syscall.Errno
}

func (e tenantError) Error() string { return e.message }
func (e tenantError) Unwrap() error {
	if e.errno == 0 {
		return nil
	}
	return e.errno
}

// Action is one thing a tenant does; written is how much it wrote.
type Action func(req Request) (written int64, err error)

// commonActions are those every tenant knows, by name; a test adds its own or
// replaces one in the table it gives ServeOr.
var commonActions = map[string]Action{
	"fill":      func(req Request) (int64, error) { return Fill(req.Path, req.Size) },
	"subvolume": func(req Request) (int64, error) { return 0, CreateSubvolume(req.Path) },
	"subvolume-inherit": func(req Request) (int64, error) {
		return 0, CreateSubvolumeInheriting(req.Path, req.Inherit)
	},
	"snapshot-inherit": func(req Request) (int64, error) {
		return 0, SnapshotInheriting(req.Path, req.Source, req.Inherit)
	},
	"read-only": func(req Request) (int64, error) { return 0, MakeReadOnly(req.Path) },
	// The attack at full speed, in one process: nest with an inheritance
	// list, then write into it at once.
	"escape": func(req Request) (int64, error) {
		if err := CreateSubvolumeInheriting(req.Path, req.Inherit); err != nil {
			return 0, err
		}
		return Fill(filepath.Join(req.Path, "data.bin"), req.Size)
	},
}

// ServeOr is a test binary's TestMain: run as the tenant (the environment
// variable env names an action), it serves that action and returns 0;
// otherwise it returns runTests(). own adds to commonActions or replaces some.
func ServeOr(env string, own map[string]Action, runTests func() int) int {
	action := os.Getenv(env)
	if action == "" {
		return runTests()
	}
	return serve(action, os.Args[len(os.Args)-1], func(action string, req Request) (int64, error) {
		do, ok := own[action]
		if !ok {
			do, ok = commonActions[action]
		}
		if !ok {
			return 0, fmt.Errorf("unknown tenant action %q", action)
		}
		return do(req)
	})
}

// serve is the tenant's side: it decodes request, has do make the action
// and prints the Result on stdout. The exit status is 0 whatever the action
// did: failing is a result.
func serve(action, request string, do func(action string, req Request) (written int64, err error)) int {
	var req Request
	var res Result
	err := json.Unmarshal([]byte(request), &req)
	if err == nil {
		res.Written, err = do(action, req)
	}
	if err != nil {
		res.Err = err.Error()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			res.Errno = int(errno)
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// Run runs bin, a test binary whose TestMain calls ServeOr(env, ...), as uid
// and gid uid, with env naming action.
func Run(bin, env string, uid uint32, action string, req Request) (Result, error) {
	arg, err := json.Marshal(req)
	if err != nil {
		return Result{}, err
	}
	cmd := exec.Command(bin, "-test.run=^$", string(arg))
	cmd.Env = append(os.Environ(), env+"="+action)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return Result{}, err
	}
	var res Result
	if err := json.Unmarshal(out, &res); err != nil {
		return Result{}, fmt.Errorf("answered %q: %w", out, err)
	}
	return res, nil
}

// CopyExecutable copies the running binary into dir as "tenant", mode
// 0755: the one go test built sits in a directory only root may enter.
func CopyExecutable(dir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	in, err := os.Open(self)
	if err != nil {
		return "", err
	}
	defer in.Close()
	bin := filepath.Join(dir, "tenant")
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return "", err
	}
	return bin, out.Close()
}

// Test is the part of testing.TB a Tenant needs (this package does not link
// package testing into the node's tenant program).
type Test interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Tenant is how a test runs its tenant: Bin (see CopyExecutable) run as
// uid UID, with the environment variable Env naming the action.
type Tenant struct {
	Bin, Env string
	UID      uint32
}

// Do makes action on path as the tenant; a tenant that does not answer
// fails the test, one whose call failed says so in the Result.
func (tn Tenant) Do(t Test, action, path string, req Request) Result {
	t.Helper()
	req.Path = path
	res, err := Run(tn.Bin, tn.Env, tn.UID, action, req)
	if err != nil {
		t.Fatalf("tenant %s %s: %v", action, path, err)
	}
	return res
}

// Must is Do, failing the test if the tenant's call failed.
func (tn Tenant) Must(t Test, action, path string, req Request) Result {
	t.Helper()
	res := tn.Do(t, action, path, req)
	if err := res.Failure(); err != nil {
		t.Fatalf("tenant %s %s: %v", action, path, err)
	}
	return res
}
