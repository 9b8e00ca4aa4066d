package tenantops

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The request numbers are the kernel's (include/uapi/linux/btrfs.h).
func TestRequestNumbersAreTheKernels(t *testing.T) {
	for _, tt := range []struct {
		name      string
		got, want uintptr
	}{
		{"BTRFS_IOC_SUBVOL_CREATE", iocSubvolCreate, 0x5000940e},
		{"BTRFS_IOC_INO_LOOKUP", iocInoLookup, 0xd0009412},
		{"BTRFS_IOC_SNAP_CREATE_V2", iocSnapCreateV2, 0x50009417},
		{"BTRFS_IOC_SUBVOL_CREATE_V2", iocSubvolCreateV2, 0x50009418},
		{"BTRFS_IOC_SUBVOL_SETFLAGS", iocSubvolSetflags, 0x4008941a},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

func TestFillWritesTheSizeAskedAndReplacesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, make([]byte, 5<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	written, err := Fill(path, 3<<20+5)
	if err != nil || written != 3<<20+5 {
		t.Fatalf("Fill: %d bytes, %v; want %d", written, err, 3<<20+5)
	}
	if info, err := os.Stat(path); err != nil || info.Size() != written {
		t.Fatalf("the file holds %v bytes (%v); want %d", info.Size(), err, written)
	}
}

// Off btrfs, every operation fails with the kernel's answer, which the
// caller can tell by errors.Is.
func TestOperationsOffBtrfsReportTheErrno(t *testing.T) {
	dir := t.TempDir()
	var statfs unix.Statfs_t
	if err := unix.Statfs(dir, &statfs); err != nil || statfs.Type == unix.BTRFS_SUPER_MAGIC {
		t.Skipf("%s is on btrfs (or unknown: %v)", dir, err)
	}
	for name, op := range map[string]func() error{
		"create":            func() error { return CreateSubvolume(filepath.Join(dir, "v1")) },
		"create inheriting": func() error { return CreateSubvolumeInheriting(filepath.Join(dir, "v2"), []uint64{}) },
		"snapshot":          func() error { return SnapshotInheriting(filepath.Join(dir, "snap"), dir, nil) },
		"read-only":         func() error { return MakeReadOnly(dir) },
		"subvolume id":      func() error { _, err := SubvolumeID(dir); return err },
	} {
		var errno unix.Errno
		if err := op(); !errors.As(err, &errno) {
			t.Errorf("%s off btrfs: %v; want an errno", name, err)
		}
	}
}

// A tenant's failure reaches the test as its message, with its errno for
// errors.Is.
func TestResultFailureCarriesTheErrno(t *testing.T) {
	for _, tt := range []struct {
		name   string
		result Result
		want   error
	}{
		{"success is no failure", Result{Written: 1}, nil},
		{"EDQUOT is EDQUOT", Result{Errno: int(unix.EDQUOT), Err: "write: disk quota exceeded"}, unix.EDQUOT},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.result.Failure()
			if (got == nil) != (tt.want == nil) || (tt.want != nil && (!errors.Is(got, tt.want) || got.Error() != tt.result.Err)) {
				t.Fatalf("Failure() = %v; want %v carrying %q", got, tt.want, tt.result.Err)
			}
		})
	}
}
