package btrfs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
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
	os.Exit(tenantops.ServeOr(tenantEnv, map[string]tenantops.Action{
		// The package's own create, as the tests that nest by hand use it.
		"subvolume": func(req tenantops.Request) (int64, error) { return 0, CreateSubvolume(req.Path) },
		"churn": func(req tenantops.Request) (int64, error) {
			return churn(req.Path, time.Duration(req.Size)*time.Millisecond)
		},
		"reflink-escape": func(req tenantops.Request) (int64, error) { return reflinkEscape(req.Path, req.Size) },
	}, m.Run))
}

// tenantBinary is a copy of this test binary that uid 1000 may execute.
func tenantBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "toposnap-tenant-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := tenantops.CopyExecutable(dir)
	if err != nil {
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

// do runs action as uid 1000 on rel, a path relative to the volume.
func (p *tenant) do(action, rel string, req tenantops.Request) tenantops.Result {
	p.t.Helper()
	return p.tenant().Do(p.t, action, filepath.Join(p.Dir, rel), req)
}

// must runs action and fails the test if the tenant's call failed.
func (p *tenant) must(action, rel string, req tenantops.Request) tenantops.Result {
	p.t.Helper()
	return p.tenant().Must(p.t, action, filepath.Join(p.Dir, rel), req)
}

func (p *tenant) tenant() tenantops.Tenant {
	return tenantops.Tenant{Bin: p.bin, Env: tenantEnv, UID: tenantUID}
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
	if err := tenantops.CreateSubvolumeInheriting(path, []uint64{}); err != nil {
		return 0, err
	}
	data := filepath.Join(path, "f")
	written, err := tenantops.Fill(data, size)
	if err != nil {
		return written, err
	}
	if err := tenantops.Reflink(filepath.Join(filepath.Dir(path), "kept"), data); err != nil {
		return written, err
	}
	if err := os.Remove(data); err != nil {
		return written, err
	}
	return written, os.Remove(path)
}
