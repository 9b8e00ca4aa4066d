package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/topology"
)

// These tests play root on another node of the zone: it can write anything
// into the shared pool directory, and the driver must trust none of it.

// within runs fn and fails the test if it has not returned by the deadline
// (reading a FIFO planted as metadata would block forever).
func within(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return: it blocked on a planted file", what)
		return nil
	}
}

func TestForeignMetadataIsRefused(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name  string
		plant func(t *testing.T, p *Pool, id string)
	}{
		{"metadata naming another object", func(t *testing.T, p *Pool, id string) {
			writeFile(t, p.metaPath(id), `{"id":"../../../../var/lib/kubelet/pods","state":"ready","capacityBytes":1}`)
		}},
		{"metadata without an id", func(t *testing.T, p *Pool, id string) {
			writeFile(t, p.metaPath(id), `{"state":"ready","capacityBytes":1}`)
		}},
		{"metadata that is a symlink to a file outside the pool", func(t *testing.T, p *Pool, id string) {
			target := filepath.Join(outside, id+".json")
			writeFile(t, target, `{"id":"`+id+`","state":"ready","capacityBytes":1}`)
			symlink(t, target, p.metaPath(id))
		}},
		{"metadata that is a FIFO", func(t *testing.T, p *Pool, id string) {
			if err := unix.Mkfifo(p.metaPath(id), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"metadata that is a directory", func(t *testing.T, p *Pool, id string) {
			if err := os.Mkdir(p.metaPath(id), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"metadata that is not JSON", func(t *testing.T, p *Pool, id string) {
			writeFile(t, p.metaPath(id), `{"id":`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := openPool(t, t.TempDir(), "node1", 100)
			volume, snapshot := p.VolumeID("v"), p.SnapshotID("s")
			tt.plant(t, p, volume)
			tt.plant(t, p, snapshot)
			err := within(t, "LookupVolume", func() error { _, err := p.LookupVolume(volume); return err })
			if !errors.Is(err, ErrForeign) {
				t.Errorf("LookupVolume: %v, want ErrForeign", err)
			}
			err = within(t, "LookupSnapshot", func() error { _, err := p.LookupSnapshot(snapshot); return err })
			if !errors.Is(err, ErrForeign) {
				t.Errorf("LookupSnapshot: %v, want ErrForeign", err)
			}
		})
	}
}

// A foreign file in meta/ is not the pool's: it does not stop the pool
// from listing and serving its own objects.
func TestForeignMetadataDoesNotStopThePool(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, VolumeRequest{Name: "ours", CapacityBytes: 10}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.metaPath(p.VolumeID("planted")), `{"id":"../../etc","state":"ready","capacityBytes":1}`)
	if _, err := p.CreateVolume(ctx, VolumeRequest{Name: "another", CapacityBytes: 10}); err != nil {
		t.Fatalf("create beside a foreign metadata file: %v", err)
	}
	listed, err := p.ListVolumes()
	if err != nil || len(listed) != 2 {
		t.Fatalf("ListVolumes = %d volumes, %v; want our 2", len(listed), err)
	}
}

// Every pool subdirectory replaced by a symlink to a directory outside the
// pool: opening the pool and using it must neither delete, create nor write
// anything there, and each refusal is ErrForeign.
func TestSymlinkedPoolDirectoryIsNeverFollowed(t *testing.T) {
	for _, sub := range []string{"tmp", "meta", "volumes", "snapshots", "locks"} {
		t.Run(sub, func(t *testing.T) {
			dir := t.TempDir()
			p := openPool(t, dir, "node1", 100)
			ctx := context.Background()
			vol, err := p.CreateVolume(ctx, VolumeRequest{Name: "v", CapacityBytes: 10})
			if err != nil {
				t.Fatal(err)
			}
			p.Close()

			// The attacker moves the real directory aside and links one of
			// node B's own directories in, holding entries named like the
			// pool's (node B's node-pool volumes, say).
			outside := t.TempDir()
			other := p.VolumeID("other")
			for _, name := range []string{
				vol.ID, vol.ID + ".node1", vol.ID + ".json", other, other + ".node1", other + ".json",
			} {
				if err := os.Mkdir(filepath.Join(outside, name), 0o700); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(outside, name, "canary"), "node B's data")
			}
			before := listTree(t, outside)
			if err := os.Rename(filepath.Join(dir, sub), filepath.Join(dir, sub+".real")); err != nil {
				t.Fatal(err)
			}
			symlink(t, outside, filepath.Join(dir, sub))

			reopened, err := Open(Config{Scope: topology.ScopeZone, Dir: dir, Owner: "r/b", Capacity: 100,
				Segment: topology.Segment{topology.ZoneKey: "b"}, Holder: "node1"})
			if err != nil {
				t.Fatalf("a symlinked %s/ stopped the pool from opening: %v", sub, err)
			}
			t.Cleanup(reopened.Close)
			_, createErr := reopened.CreateVolume(ctx, VolumeRequest{Name: "other", CapacityBytes: 10})
			snapErr := within(t, "CreateSnapshot", func() error {
				snap, err := reopened.CreateSnapshot("s", vol)
				if err == nil {
					_, err = reopened.WaitSnapshot(ctx, snap.ID)
				}
				return err
			})
			deleteErr := reopened.DeleteVolume(ctx, vol.ID)
			_, _ = reopened.ExpandVolume(vol.ID, 20)

			if after := listTree(t, outside); !equalStrings(before, after) {
				t.Fatalf("the directory the symlink points to was changed:\nbefore %v\nafter  %v", before, after)
			}
			refusals := map[string]error{"CreateVolume": createErr, "DeleteVolume": deleteErr}
			if sub == "snapshots" {
				refusals = map[string]error{"CreateSnapshot": snapErr}
			}
			for what, err := range refusals {
				if !errors.Is(err, ErrForeign) {
					t.Errorf("%s through a symlinked %s/: %v, want ErrForeign", what, sub, err)
				}
			}
			if !reported(reopened, sub+"/") {
				t.Errorf("the symlinked %s/ is not reported: Unrecovered() = %+v", sub, reopened.Unrecovered())
			}
		})
	}
}

// A symlink left in tmp/ is unlinked, and what it points to survives.
func TestSymlinkInTmpIsUnlinkedNotFollowed(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "canary"), "x")
	link := p.tempPath(p.VolumeID("v"))
	symlink(t, outside, link)
	openPool(t, dir, "node1", 100)
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Errorf("the stale symlink in tmp/ survived: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "canary")); err != nil {
		t.Fatalf("the directory a tmp/ symlink pointed to lost its files: %v", err)
	}
}

// A lock file planted as a dangling symlink must not make the driver create
// a file where it points.
func TestLockThroughSymlinkIsRefused(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	target := filepath.Join(t.TempDir(), "created-by-driver")
	symlink(t, target, filepath.Join(p.cfg.Dir, "locks", p.VolumeID("v")))
	_, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 1})
	if _, statErr := os.Lstat(target); !os.IsNotExist(statErr) {
		t.Fatalf("a file was created through the lock symlink: %v", statErr)
	}
	if !errors.Is(err, ErrForeign) {
		t.Fatalf("create with a symlinked lock: %v, want ErrForeign", err)
	}
}

// A block volume whose image was replaced by a symlink to a file outside
// the pool: expanding it must not touch that file.
func TestImageSymlinkIsNotResized(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "b", CapacityBytes: 10, Block: true})
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "host-disk")
	writeFile(t, target, "")
	image := filepath.Join(p.VolumeDir(vol.ID), ImageName)
	if err := os.Remove(image); err != nil {
		t.Fatal(err)
	}
	symlink(t, target, image)
	_, err = p.ExpandVolume(vol.ID, 20)
	if info, statErr := os.Stat(target); statErr != nil || info.Size() != 0 {
		t.Fatalf("the file the image symlink points to was resized: %v, %v", info.Size(), statErr)
	}
	if !errors.Is(err, ErrForeign) {
		t.Fatalf("expand of a symlinked image: %v, want ErrForeign", err)
	}
}

// A volume directory replaced by a symlink: it is refused to the node side,
// and deleting the volume removes the link, never what it points to.
func TestSymlinkedVolumeDirectory(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "canary"), "x")
	if err := os.Remove(p.VolumeDir(vol.ID)); err != nil {
		t.Fatal(err)
	}
	symlink(t, outside, p.VolumeDir(vol.ID))
	if f, err := p.OpenVolumeDir(vol.ID); !errors.Is(err, ErrForeign) {
		if f != nil {
			f.Close()
		}
		t.Errorf("OpenVolumeDir of a symlink: %v, want ErrForeign", err)
	}
	if _, err := p.VolumeUsage(vol.ID); err == nil {
		t.Errorf("VolumeUsage measured through a symlink")
	}
	if err := p.DeleteVolume(context.Background(), vol.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "canary")); err != nil {
		t.Fatalf("deleting the volume removed what its symlink pointed to: %v", err)
	}
}

func reported(p *Pool, object string) bool {
	for _, u := range p.Unrecovered() {
		if u.Object == object {
			return true
		}
	}
	return false
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// listTree lists every path under dir with its size, to notice any change.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out = append(out, rel+" "+info.Mode().String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Temporary work whose lock file was replaced by a symlink is left alone
// and reported, not skipped in silence.
func TestTemporaryWithForeignLockIsReported(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	id := p.VolumeID("v")
	if err := os.Mkdir(p.tempPath(id), 0o700); err != nil {
		t.Fatal(err)
	}
	symlink(t, filepath.Join(t.TempDir(), "elsewhere"), filepath.Join(dir, "locks", id))
	reopened := openPool(t, dir, "node1", 100)
	if !reported(reopened, "tmp/") {
		t.Fatalf("a temporary behind a foreign lock is not reported: %+v", reopened.Unrecovered())
	}
	if _, err := os.Stat(reopened.tempPath(id)); err != nil {
		t.Fatalf("the temporary was removed without its lock: %v", err)
	}
}
