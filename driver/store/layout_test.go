package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A sealed volume is made with data/, work/ and lower/ (the pod's, then the
// node's), and every copy keeps its source's layout: a snapshot, its
// restore, a clone; a volume of the other layout stays as it was made.
func TestSealedLayoutIsMadeAndKept(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 1<<30)
	ctx := context.Background()
	sealed, err := p.CreateVolume(ctx, VolumeRequest{Name: "sealed", CapacityBytes: 10, Layout: LayoutSealed})
	if err != nil {
		t.Fatal(err)
	}
	root, err := p.CreateVolume(ctx, VolumeRequest{Name: "root", CapacityBytes: 10, Layout: LayoutRoot})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{{"", 0o755}, {SealedData, 0o777}, {SealedWork, 0o700}, {SealedLower, 0o555}} {
		info, err := os.Stat(filepath.Join(p.VolumeDir(sealed.ID), d.name))
		if err != nil || !info.IsDir() || info.Mode().Perm() != d.mode {
			t.Errorf("sealed volume's %q: %v %v, want a directory of mode %v", d.name, info, err, d.mode)
		}
	}
	if entries, _ := os.ReadDir(p.VolumeDir(root.ID)); len(entries) != 0 {
		t.Errorf("a root-layout volume holds %d entries, want none", len(entries))
	}
	writeFile(t, filepath.Join(p.VolumeDir(sealed.ID), SealedData, "file"), "the pod's")

	snap, err := p.CreateSnapshot("snap", sealed)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if snap, err = p.WaitSnapshot(waitCtx, snap.ID); err != nil {
		t.Fatal(err)
	}
	restore, err := p.CreateVolume(ctx, VolumeRequest{Name: "restore", CapacityBytes: 10,
		Source: &Source{Pool: p, SnapshotID: snap.ID, Layout: snap.Layout}})
	if err != nil {
		t.Fatal(err)
	}
	clone, err := p.CreateVolume(ctx, VolumeRequest{Name: "clone", CapacityBytes: 10,
		Source: &Source{Pool: p, VolumeID: root.ID, Layout: root.Layout}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		got  Layout
		want Layout
	}{
		{"snapshot of a sealed volume", snap.Layout, LayoutSealed},
		{"its restore", restore.Layout, LayoutSealed},
		{"clone of a root-layout volume", clone.Layout, LayoutRoot},
	} {
		if c.got != c.want {
			t.Errorf("%s: layout %q, want %q", c.what, c.got, c.want)
		}
	}
	if data, err := os.ReadFile(filepath.Join(p.VolumeDir(restore.ID), SealedData, "file")); err != nil || string(data) != "the pod's" {
		t.Errorf("the restore's data/file: %q, %v", data, err)
	}
	dirs, err := p.OpenSealed(restore.ID)
	if err != nil {
		t.Fatalf("open the restore's layers: %v", err)
	}
	dirs.Close()
}

// What OpenSealed refuses (the zone pool's files are written by every node
// of the zone): a symlink for any of the three directories, a file for
// one, and anything in lower/, which would show in the pod's volume.
func TestOpenSealedRefusesWhatThePoolDidNotPutThere(t *testing.T) {
	outside := t.TempDir()
	for _, c := range []struct {
		name   string
		tamper func(t *testing.T, volumeDir string)
	}{
		{"data/ a symlink", func(t *testing.T, v string) { replaceBySymlink(t, filepath.Join(v, SealedData), outside) }},
		{"work/ a symlink", func(t *testing.T, v string) { replaceBySymlink(t, filepath.Join(v, SealedWork), outside) }},
		{"lower/ a symlink", func(t *testing.T, v string) { replaceBySymlink(t, filepath.Join(v, SealedLower), outside) }},
		{"data/ a file", func(t *testing.T, v string) {
			if err := os.Remove(filepath.Join(v, SealedData)); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(v, SealedData), "x")
		}},
		{"lower/ not empty", func(t *testing.T, v string) {
			if err := os.Chmod(filepath.Join(v, SealedLower), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(v, SealedLower, "planted"), "shows in the pod's volume")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := openPool(t, t.TempDir(), "node1", 100)
			vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 10, Layout: LayoutSealed})
			if err != nil {
				t.Fatal(err)
			}
			if dirs, err := p.OpenSealed(vol.ID); err != nil {
				t.Fatalf("untampered: %v", err)
			} else {
				dirs.Close()
			}
			c.tamper(t, p.VolumeDir(vol.ID))
			dirs, err := p.OpenSealed(vol.ID)
			if err == nil {
				dirs.Close()
			}
			if !errors.Is(err, ErrForeign) {
				t.Fatalf("OpenSealed: %v, want ErrForeign", err)
			}
		})
	}
}

func replaceBySymlink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	symlink(t, target, path)
}
