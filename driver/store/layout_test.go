package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A sealed volume is made with upper/root/ (the pod's), upper/, work/ and
// lower/ (the node's). A snapshot keeps its source's layout; a copy is
// sealed when its class asks or its source is sealed, and a copy of an
// unsealed source asked to be sealed has its tree moved into upper/root/,
// which takes over the copy's root mode.
func TestSealedLayoutIsMadeAndKept(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 1<<30)
	ctx := context.Background()
	pod := SealedUpper + "/" + SealedPodDir
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
	}{{"", 0o755}, {SealedUpper, 0o755}, {pod, 0o777}, {SealedWork, 0o700}, {SealedLower, 0o555}} {
		info, err := os.Stat(filepath.Join(p.VolumeDir(sealed.ID), d.name))
		if err != nil || !info.IsDir() || info.Mode().Perm() != d.mode {
			t.Errorf("sealed volume's %q: %v %v, want a directory of mode %v", d.name, info, err, d.mode)
		}
	}
	if entries, _ := os.ReadDir(p.VolumeDir(root.ID)); len(entries) != 0 {
		t.Errorf("a root-layout volume holds %d entries, want none", len(entries))
	}
	writeFile(t, filepath.Join(p.VolumeDir(sealed.ID), pod, "file"), "the pod's")
	writeFile(t, filepath.Join(p.VolumeDir(root.ID), "upper"), "a tenant's file named like the layout's")
	if err := os.Chmod(p.VolumeDir(root.ID), 0o770); err != nil {
		t.Fatal(err)
	}

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
	sealedClone, err := p.CreateVolume(ctx, VolumeRequest{Name: "sealed-clone", CapacityBytes: 10, Layout: LayoutSealed,
		Source: &Source{Pool: p, VolumeID: root.ID, Layout: root.Layout}})
	if err != nil {
		t.Fatal(err)
	}
	unsealedRestore, err := p.CreateVolume(ctx, VolumeRequest{Name: "unsealed-restore", CapacityBytes: 10, Layout: LayoutRoot,
		Source: &Source{Pool: p, SnapshotID: snap.ID, Layout: snap.Layout}})
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
		{"sealed clone of a root-layout volume", sealedClone.Layout, LayoutSealed},
		{"unsealed restore of a sealed snapshot", unsealedRestore.Layout, LayoutSealed},
	} {
		if c.got != c.want {
			t.Errorf("%s: layout %q, want %q", c.what, c.got, c.want)
		}
	}
	if data, err := os.ReadFile(filepath.Join(p.VolumeDir(restore.ID), pod, "file")); err != nil || string(data) != "the pod's" {
		t.Errorf("the restore's file: %q, %v", data, err)
	}
	if data, err := os.ReadFile(filepath.Join(p.VolumeDir(sealedClone.ID), pod, "upper")); err != nil || string(data) != "a tenant's file named like the layout's" {
		t.Errorf("the sealed clone's file named upper: %q, %v", data, err)
	}
	if info, err := os.Stat(filepath.Join(p.VolumeDir(sealedClone.ID), pod)); err != nil || info.Mode().Perm() != 0o770 {
		t.Errorf("the sealed clone's pod directory: %v %v, want the source root's mode 0770", info.Mode(), err)
	}
	for _, id := range []string{restore.ID, sealedClone.ID, unsealedRestore.ID} {
		dirs, err := p.OpenSealed(id)
		if err != nil {
			t.Fatalf("open the layers of %s: %v", id, err)
		}
		dirs.Close()
	}
}

// What OpenSealed refuses (the zone pool's files are written by every node
// of the zone): a symlink for any of its directories, a file for one, and
// anything in lower/, which would show in the pod's volume.
func TestOpenSealedRefusesWhatThePoolDidNotPutThere(t *testing.T) {
	outside := t.TempDir()
	for _, c := range []struct {
		name   string
		tamper func(t *testing.T, volumeDir string)
	}{
		{"upper/ a symlink", func(t *testing.T, v string) { replaceBySymlink(t, filepath.Join(v, SealedUpper), outside) }},
		{"the pod directory a symlink", func(t *testing.T, v string) {
			replaceBySymlink(t, filepath.Join(v, SealedUpper, SealedPodDir), outside)
		}},
		{"work/ a symlink", func(t *testing.T, v string) { replaceBySymlink(t, filepath.Join(v, SealedWork), outside) }},
		{"lower/ a symlink", func(t *testing.T, v string) { replaceBySymlink(t, filepath.Join(v, SealedLower), outside) }},
		{"upper/ a file", func(t *testing.T, v string) {
			if err := os.RemoveAll(filepath.Join(v, SealedUpper)); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(v, SealedUpper), "x")
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
