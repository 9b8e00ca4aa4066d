package btrfs

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A tenant is a pod's process: uid 1000, no capabilities, in its volume
// through a bind mount. Tests run the tenant's side as this test binary
// re-executed with tenantEnv set, so every attack is made with a tenant's
// rights, not root's.
const (
	tenantEnv = "TOPOSNAP_BTRFS_TENANT"
	tenantUID = 1000
)

func TestMain(m *testing.M) {
	if action := os.Getenv(tenantEnv); action != "" {
		os.Exit(runTenant(action, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// tenantRequest is what the test asks the tenant to do.
type tenantRequest struct {
	Path string
	// Size is how much "fill" writes at most.
	Size int64
	// Inherit is the qgroup list "subvolume-inherit", "escape" and
	// "snapshot-inherit" pass to the kernel (an empty one is a zeroed
	// btrfs_qgroup_inherit).
	Inherit []uint64
	// Source is the subvolume "snapshot-inherit" snapshots.
	Source string
}

// tenantResult is what the tenant did.
type tenantResult struct {
	Written int64
	Errno   int
	Err     string
}

func (r tenantResult) err() error {
	if r.Err == "" {
		return nil
	}
	if r.Errno != 0 {
		return fmt.Errorf("%s: %w", r.Err, syscall.Errno(r.Errno))
	}
	return errors.New(r.Err)
}

// runTenant does one action as the tenant and prints its result.
func runTenant(action, request string) int {
	var req tenantRequest
	var res tenantResult
	var err error
	if err = json.Unmarshal([]byte(request), &req); err == nil {
		switch action {
		case "fill":
			res.Written, err = fill(req.Path, req.Size)
		case "subvolume":
			err = CreateSubvolume(req.Path)
		case "churn":
			res.Written, err = churn(req.Path, time.Duration(req.Size)*time.Millisecond)
		case "reflink-escape":
			res.Written, err = reflinkEscape(req.Path, req.Size)
		case "read-only":
			err = makeReadOnly(req.Path)
		case "subvolume-inherit":
			err = createSubvolumeInherit(req.Path, req.Inherit)
		case "snapshot-inherit":
			err = createInherit(req.Path, req.Source, req.Inherit)
		case "escape":
			// The attack at full speed: nest with an inheritance list,
			// then write into it at once, in one process.
			if err = createSubvolumeInherit(req.Path, req.Inherit); err == nil {
				res.Written, err = fill(filepath.Join(req.Path, "data.bin"), req.Size)
			}
		default:
			err = fmt.Errorf("unknown tenant action %q", action)
		}
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

// tenantBinary is a copy of this test binary that uid 1000 may execute
// (the one go test built sits in a directory only root can enter).
func tenantBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "toposnap-tenant-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	bin := filepath.Join(dir, "tenant")
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// tenant is a pod's view of one volume.
type tenant struct {
	t   *testing.T
	bin string
	// Dir is the volume as the tenant sees it (a bind mount of it).
	Dir string
}

// newTenant bind-mounts the volume at a place uid 1000 can reach, as the
// kubelet does for a pod.
func newTenant(t *testing.T, volume string) *tenant {
	t.Helper()
	dir, err := os.MkdirTemp("", "toposnap-pod-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(volume, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount %s: %v", volume, err)
	}
	p := &tenant{t: t, bin: tenantBinary(t), Dir: dir}
	t.Cleanup(p.leave)
	return p
}

// leave unmounts the volume, as unpublishing does (a mounted subvolume
// stays on disk after its delete until it is unmounted).
func (p *tenant) leave() {
	if p.Dir == "" {
		return
	}
	if err := unix.Unmount(p.Dir, unix.MNT_DETACH); err != nil {
		p.t.Errorf("unmount %s: %v", p.Dir, err)
	}
	_ = os.Remove(p.Dir)
	p.Dir = ""
}

// do runs action as uid 1000 on the relative path rel of the volume.
func (p *tenant) do(action, rel string, req tenantRequest) tenantResult {
	p.t.Helper()
	req.Path = filepath.Join(p.Dir, rel)
	arg, err := json.Marshal(req)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.bin, "-test.run=^$", string(arg))
	cmd.Env = append(os.Environ(), tenantEnv+"="+action)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tenantUID, Gid: tenantUID}}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		p.t.Fatalf("tenant %s %s: %v", action, rel, err)
	}
	var res tenantResult
	if err := json.Unmarshal(out, &res); err != nil {
		p.t.Fatalf("tenant %s %s answered %q: %v", action, rel, out, err)
	}
	return res
}

// must runs action and fails the test if the tenant's call failed.
func (p *tenant) must(action, rel string, req tenantRequest) tenantResult {
	p.t.Helper()
	res := p.do(action, rel, req)
	if err := res.err(); err != nil {
		p.t.Fatalf("tenant %s %s: %v", action, rel, err)
	}
	return res
}

// subvolQgroupInherit is BTRFS_SUBVOL_QGROUP_INHERIT.
const subvolQgroupInherit = 1 << 2

// createSubvolumeInherit creates a subvolume the way any user may: with
// its own qgroup inheritance list.
func createSubvolumeInherit(path string, qgroups []uint64) error {
	return createInherit(path, "", qgroups)
}

// createInherit creates a subvolume at path, or a writable snapshot of the
// subvolume source when source is set, passing a qgroup inheritance list
// (struct btrfs_qgroup_inherit: flags, num_qgroups, num_ref_copies,
// num_excl_copies, a btrfs_qgroup_limit, then the qgroup ids).
func createInherit(path, source string, qgroups []uint64) error {
	parent, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer parent.Close()
	inherit := make([]byte, 72+8*len(qgroups))
	binary.NativeEndian.PutUint64(inherit[8:], uint64(len(qgroups)))
	for i, id := range qgroups {
		binary.NativeEndian.PutUint64(inherit[72+8*i:], id)
	}
	args := volArgsV2{flags: subvolQgroupInherit}
	args.unused[0] = uint64(len(inherit))
	args.unused[1] = uint64(uintptr(unsafe.Pointer(&inherit[0])))
	if err := setName(args.name[:], filepath.Base(path)); err != nil {
		return err
	}
	request := iocSubvolCreateV2
	if source != "" {
		src, err := os.Open(source)
		if err != nil {
			return err
		}
		defer src.Close()
		args.fd = int64(src.Fd())
		request = iocSnapCreateV2
	}
	err = ioctl(parent.Fd(), request, unsafe.Pointer(&args))
	runtime.KeepAlive(inherit) // the kernel reads it through a plain address
	if err != nil {
		return fmt.Errorf("create subvolume %s inheriting %v: %w", path, qgroups, err)
	}
	return nil
}

// makeReadOnly makes the subvolume at path read-only, as its owner may
// (BTRFS_IOC_SUBVOL_SETFLAGS).
func makeReadOnly(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return setSubvolumeFlags(int(f.Fd()), subvolReadOnly)
}

// churn creates and removes a directory in dir for as long as lasts, as a
// busy build or a hostile tenant would, and returns how many it created.
func churn(dir string, lasts time.Duration) (int64, error) {
	var created int64
	path := filepath.Join(dir, "churn")
	for deadline := time.Now().Add(lasts); time.Now().Before(deadline); created++ {
		if err := os.Mkdir(path, 0o755); err != nil {
			return created, err
		}
		if err := os.Remove(path); err != nil {
			return created, err
		}
	}
	return created, nil
}

// reflinkEscape is the escape Watch can report, not undo: nest a
// subvolume in no limit group, write size bytes into it, reflink them into
// the volume, remove the file and the subvolume. The extents stay charged
// to the removed subvolume's qgroup, which is in no limit group.
func reflinkEscape(path string, size int64) (int64, error) {
	if err := createSubvolumeInherit(path, []uint64{}); err != nil {
		return 0, err
	}
	data := filepath.Join(path, "f")
	written, err := fill(data, size)
	if err != nil {
		return written, err
	}
	src, err := os.Open(data)
	if err != nil {
		return written, err
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(filepath.Dir(path), "kept"))
	if err != nil {
		return written, err
	}
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return written, fmt.Errorf("reflink: %w", err)
	}
	if err := os.Remove(data); err != nil {
		return written, err
	}
	return written, os.Remove(path)
}
