package btrfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
)

// emptySubvolDirIno is the inode a snapshot shows where its source had a
// nested subvolume (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID): the hole.
const emptySubvolDirIno = 2

// holes lists the paths under dir that are holes left by nested subvolumes.
func holes(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Sys().(*syscall.Stat_t).Ino == emptySubvolDirIno {
			rel, _ := filepath.Rel(dir, path)
			found = append(found, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// A snapshot or clone of a volume holding a nested subvolume would show an
// empty directory where the subvolume's data was: it is refused with the
// nested subvolumes' paths, and nothing is left at the target.
func TestSnapshotOfNestedSubvolumesIsRefused(t *testing.T) {
	b, dir := openTestBackend(t)
	ctx := context.Background()
	for i, tt := range []struct {
		name   string
		nested []string // made by the tenant, in order
		clone  bool
		want   []string
	}{
		{name: "snapshot of a volume with a nested subvolume", nested: []string{"nested"}, want: []string{"nested"}},
		{name: "clone of a volume with a nested subvolume", nested: []string{"nested"}, clone: true, want: []string{"nested"}},
		{name: "nested subvolume deep in directories is named by its path", nested: []string{"a/", "a/b/", "a/b/containers"}, want: []string{"a/b/containers"}},
		{name: "every nested subvolume is named", nested: []string{"one", "two", "two/inner"}, want: []string{"one", "two"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vol := filepath.Join(dir, fmt.Sprintf("vol%d", i))
			if err := b.Create("", vol, 128<<20); err != nil {
				t.Fatal(err)
			}
			pod := newTenant(t, vol)
			for _, path := range tt.nested {
				if path[len(path)-1] == '/' {
					if err := os.Mkdir(filepath.Join(vol, path), 0o777); err != nil {
						t.Fatal(err)
					}
					if err := os.Chmod(filepath.Join(vol, path), 0o777); err != nil {
						t.Fatal(err)
					}
					continue
				}
				pod.must("subvolume", path, tenantops.Request{})
				pod.must("fill", filepath.Join(path, "data.bin"), tenantops.Request{Size: 4 << 20})
			}
			target := vol + "-copy"
			var err error
			if tt.clone {
				err = b.Clone(ctx, vol, vol+"-tmp", target, 128<<20, nil)
			} else {
				err = b.Snapshot(ctx, vol, vol+"-tmp", target, nil)
			}
			var refused *NestedSubvolumeError
			if !errors.As(err, &refused) {
				t.Fatalf("got %v (holes in the copy: %q), want a NestedSubvolumeError", err, holes(t, target))
			}
			if got := slices.Sorted(slices.Values(refused.Paths)); !slices.Equal(got, tt.want) {
				t.Errorf("refusal names %q, want %q", got, tt.want)
			}
			if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused copy is still at %s: %v", target, err)
			}
		})
	}
}

// A volume whose nested subvolumes are gone snapshots again.
func TestSnapshotAfterNestedSubvolumeIsRemoved(t *testing.T) {
	b, dir := openTestBackend(t)
	vol := filepath.Join(dir, "vol")
	if err := b.Create("", vol, 128<<20); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(filepath.Join(vol, "nested")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(vol, "nested")); err != nil {
		t.Fatal(err)
	}
	if err := b.Snapshot(context.Background(), vol, filepath.Join(dir, "tmp"), filepath.Join(dir, "snap"), nil); err != nil {
		t.Fatal(err)
	}
}

// A tenant that creates and removes nested subvolumes while snapshots are
// cut never gets a snapshot with a hole: each one is whole or refused.
func TestSnapshotRacingNestedSubvolumesHasNoHole(t *testing.T) {
	b, dir := openTestBackend(t)
	vol := filepath.Join(dir, "vol")
	if err := b.Create("", vol, 256<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := tenantops.Fill(filepath.Join(vol, "base"), 1<<20); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() {
		// Root's goroutine stands in for the tenant: the race, not the
		// rights, is what this test is about.
		nested := filepath.Join(vol, "nested")
		for {
			select {
			case <-stop:
				churned <- nil
				return
			default:
			}
			if err := CreateSubvolume(nested); err != nil {
				churned <- err
				return
			}
			if err := os.Remove(nested); err != nil {
				churned <- err
				return
			}
		}
	}()
	var whole, refused int
	for i := range 60 {
		snap := filepath.Join(dir, fmt.Sprintf("snap%d", i))
		err := b.Snapshot(context.Background(), vol, filepath.Join(dir, "tmp"), snap, nil)
		var nested *NestedSubvolumeError
		switch {
		case errors.As(err, &nested):
			refused++
			if _, err := os.Lstat(snap); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("refused snapshot left at %s: %v", snap, err)
			}
		case err != nil:
			t.Fatal(err)
		default:
			whole++
			if h := holes(t, snap); len(h) > 0 {
				close(stop)
				if err := <-churned; err != nil {
					t.Errorf("churn: %v", err)
				}
				t.Fatalf("snapshot %d has holes %q", i, h)
			}
		}
	}
	close(stop)
	if err := <-churned; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d snapshots whole, %d refused", whole, refused)
}

// A subvolume nested after the look for nested subvolumes but before the
// snapshot is cut (the tenant's race, made certain) is caught by the check
// after it: the snapshot or clone is removed and refused.
func TestSubvolumeNestedDuringSnapshotIsRefused(t *testing.T) {
	b, dir := openTestBackend(t)
	for i, tt := range []struct {
		name    string
		during  func(vol string) error
		clone   bool
		refused []string
	}{
		{
			name:    "snapshot: a subvolume nested in a directory meanwhile",
			during:  func(vol string) error { return CreateSubvolume(filepath.Join(vol, "dir", "late")) },
			refused: []string{"dir/late"},
		},
		{
			name:    "clone: a subvolume nested meanwhile",
			during:  func(vol string) error { return CreateSubvolume(filepath.Join(vol, "late")) },
			clone:   true,
			refused: []string{"late"},
		},
		{
			name: "snapshot: a subvolume nested and removed meanwhile leaves no hole",
			during: func(vol string) error {
				if err := CreateSubvolume(filepath.Join(vol, "gone")); err != nil {
					return err
				}
				return os.Remove(filepath.Join(vol, "gone"))
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vol := filepath.Join(dir, fmt.Sprintf("vol%d", i))
			if err := b.Create("", vol, 128<<20); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(vol, "dir"), 0o777); err != nil {
				t.Fatal(err)
			}
			testHookBeforeSnapshot = func(string) {
				if err := tt.during(vol); err != nil {
					t.Error(err)
				}
			}
			defer func() { testHookBeforeSnapshot = nil }()
			target := vol + "-copy"
			var err error
			if tt.clone {
				err = b.Clone(context.Background(), vol, vol+"-tmp", target, 128<<20, nil)
			} else {
				err = b.Snapshot(context.Background(), vol, vol+"-tmp", target, nil)
			}
			var refused *NestedSubvolumeError
			switch {
			case tt.refused == nil && err != nil:
				t.Fatalf("snapshot without a hole refused: %v", err)
			case tt.refused == nil:
				if h := holes(t, target); len(h) > 0 {
					t.Fatalf("snapshot has holes %q", h)
				}
			case !errors.As(err, &refused):
				t.Fatalf("got %v (holes in the copy: %q), want a NestedSubvolumeError", err, holes(t, target))
			case !slices.Equal(refused.Paths, tt.refused):
				t.Fatalf("refusal names %q, want %q", refused.Paths, tt.refused)
			default:
				if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the refused copy is still at %s: %v", target, err)
				}
			}
		})
	}
}

// The check after the snapshot finds a subvolume linked since the
// generation read before it, whatever the check before saw.
func TestLinksSinceFindsSubvolumeLinkedAfterMark(t *testing.T) {
	b, dir := openTestBackend(t)
	vol := filepath.Join(dir, "vol")
	if err := b.Create("", vol, 128<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(vol, "x", "y"), 0o777); err != nil {
		t.Fatal(err)
	}
	mark, err := fsGeneration(b.root)
	if err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(filepath.Join(vol, "x", "y", "late")); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(vol)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := snapshot(src, b.root, "snap", true); err != nil {
		t.Fatal(err)
	}
	id, err := SubvolumeID(filepath.Join(dir, "snap"))
	if err != nil {
		t.Fatal(err)
	}
	links, err := subvolumeLinksSince(b.root, id, mark)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(links, []string{"x/y/late"}) {
		t.Fatalf("links since the mark: %q, want [x/y/late]", links)
	}
}

// A tenant that fills a nested subvolume to its volume's limit cannot make
// the volume undeletable: Delete succeeds, at once and when repeated, and
// leaves no subvolume and no qgroup.
func TestDeleteFullVolumeWithNestedSubvolumes(t *testing.T) {
	b, dir := openTestBackend(t)
	for i, tt := range []struct {
		name   string
		nested []string
		full   string // the file the tenant fills until EDQUOT
	}{
		{name: "nested subvolume filled to the limit", nested: []string{"nested"}, full: "nested/data.bin"},
		{name: "volume filled, nested subvolume empty", nested: []string{"nested"}, full: "data.bin"},
		{name: "two levels nested, the deepest filled", nested: []string{"nested", "nested/deeper"}, full: "nested/deeper/data.bin"},
		{name: "several nested subvolumes, one filled", nested: []string{"a", "b", "c"}, full: "b/data.bin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vol := filepath.Join(dir, fmt.Sprintf("vol%d", i))
			if err := b.Create("", vol, 256<<20); err != nil {
				t.Fatal(err)
			}
			volID, err := SubvolumeID(vol)
			if err != nil {
				t.Fatal(err)
			}
			ids := []uint64{volID}
			pod := newTenant(t, vol)
			for _, path := range tt.nested {
				pod.must("subvolume", path, tenantops.Request{})
				id, err := SubvolumeID(filepath.Join(vol, path))
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			res := pod.do("fill", tt.full, tenantops.Request{Size: 1 << 30})
			if !isQuotaError(res.Failure()) {
				t.Fatalf("the tenant wrote %d bytes into a 256 MiB volume (err %v), want a quota error", res.Written, res.Failure())
			}
			pod.leave()
			deleteTwice(t, b, vol)
			waitCleaned(t, b, ids...)
			assertQgroupGone(t, b, volID)
		})
	}
}

// A nested subvolume the tenant joined to a neighbour's qgroup and filled
// until the neighbour's limit: the volume is still deleted, and the
// neighbour gets its charge back rather than having its limit lifted.
func TestDeleteVolumeWhoseNestedSubvolumeFilledANeighbour(t *testing.T) {
	b, dir := openTestBackend(t)
	vol, victim := filepath.Join(dir, "vol"), filepath.Join(dir, "victim")
	if err := b.Create("", vol, 256<<20); err != nil {
		t.Fatal(err)
	}
	if err := b.Create("", victim, 32<<20); err != nil {
		t.Fatal(err)
	}
	victimID, err := SubvolumeID(victim)
	if err != nil {
		t.Fatal(err)
	}
	pod := newTenant(t, vol)
	pod.must("subvolume-inherit", "sub", tenantops.Request{Inherit: []uint64{qgroupID(1, victimID)}})
	if res := pod.do("fill", "sub/data.bin", tenantops.Request{Size: 64 << 20}); !isQuotaError(res.Failure()) {
		t.Fatalf("the tenant wrote %d bytes through a neighbour's 32 MiB qgroup (%v)", res.Written, res.Failure())
	}
	pod.leave()
	if err := b.Delete(vol); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := unix.Syncfs(int(b.root.Fd())); err != nil {
		t.Fatal(err)
	}
	if used, err := b.Usage(victim); err != nil || used > 1<<20 {
		t.Errorf("neighbour usage after the delete: %d (%v), want its charge back", used, err)
	}
	if res := newTenant(t, victim).do("fill", "mine.bin", tenantops.Request{Size: 16 << 20}); res.Failure() != nil {
		t.Errorf("the neighbour wrote only %d bytes: %v", res.Written, res.Failure())
	}
}
