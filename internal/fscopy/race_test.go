package fscopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// secret is what lies outside the tenant's volume; no copy may contain it.
var secret = []byte("SECRET-OUTSIDE-THE-VOLUME-4f2a9c")

// outside makes what a tenant would like the driver to read: a file and a
// directory holding the secret, and a FIFO nobody writes to (opening it
// for reading would block forever).
func outside(t *testing.T) (file, dir, fifo string) {
	t.Helper()
	base := t.TempDir()
	file, dir, fifo = filepath.Join(base, "secret"), filepath.Join(base, "secret-dir"), filepath.Join(base, "fifo")
	if err := os.WriteFile(file, secret, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "inner"), secret, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	return file, dir, fifo
}

// racer swaps each of names in vol, as fast as it can, between a regular
// file, a directory with a file in it, a symlink to the outside file, a
// symlink to the outside directory, a symlink to the outside FIFO and a
// FIFO of its own, until stop is closed. It works relative to the parent's
// descriptor, opened O_NOFOLLOW, so that it never follows the symlinks it
// (or another racer, swapping the parent) planted.
func racer(vol string, names []string, file, dir, fifo string, stop <-chan struct{}, swaps *atomic.Int64) {
	regular := func(dirfd int, name string) error {
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return err
		}
		_, err = unix.Write(fd, []byte("tenant data\n"))
		closeFd(fd)
		return err
	}
	directory := func(dirfd int, name string) error {
		if err := unix.Mkdirat(dirfd, name, 0o755); err != nil {
			return err
		}
		fd, err := unix.Openat(dirfd, name, unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer closeFd(fd)
		inner, err := unix.Openat(fd, "inner", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return err
		}
		_, err = unix.Write(inner, []byte("tenant inner\n"))
		closeFd(inner)
		return err
	}
	// Ordered so that each dangerous swap follows what a copier must have
	// seen first: a file becomes a link to the secret or to the FIFO, a
	// directory a link to the secret directory, a file a FIFO.
	kinds := []func(dirfd int, name string) error{
		regular,
		func(dirfd int, name string) error { return unix.Symlinkat(file, dirfd, name) },
		regular,
		func(dirfd int, name string) error { return unix.Symlinkat(fifo, dirfd, name) },
		regular,
		func(dirfd int, name string) error { return unix.Mknodat(dirfd, name, unix.S_IFIFO|0o644, 0) },
		directory,
		func(dirfd int, name string) error { return unix.Symlinkat(dir, dirfd, name) },
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		rel := names[i%len(names)]
		dirfd, err := unix.Open(filepath.Join(vol, filepath.Dir(rel)), unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue // the parent is itself swapped out right now
		}
		name := filepath.Base(rel)
		removeAt(dirfd, name)
		if kinds[(i/len(names))%len(kinds)](dirfd, name) == nil {
			swaps.Add(1)
		}
		closeFd(dirfd)
	}
}

// removeAt removes name in dirfd without following anything: a file or
// link is unlinked, a directory emptied one level down and removed.
func removeAt(dirfd int, name string) {
	if unix.Unlinkat(dirfd, name, 0) == nil {
		return
	}
	fd, err := unix.Openat(dirfd, name, unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	dir := os.NewFile(uintptr(fd), name)
	entries, _ := dir.Readdirnames(-1)
	for _, entry := range entries {
		if unix.Unlinkat(fd, entry, 0) != nil {
			if sub, err := unix.Openat(fd, entry, unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err == nil {
				subDir := os.NewFile(uintptr(sub), entry)
				inner, _ := subDir.Readdirnames(-1)
				for _, leaf := range inner {
					_ = unix.Unlinkat(sub, leaf, 0)
				}
				subDir.Close()
				_ = unix.Unlinkat(fd, entry, unix.AT_REMOVEDIR)
			}
		}
	}
	dir.Close()
	_ = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// TestCopyRacingTheTenant copies a volume over and over while the tenant
// swaps files, directories, symlinks (to a secret file, a secret
// directory and a FIFO outside) and FIFOs in it. Every copy finishes (no
// FIFO hangs it), and no copy ever holds a byte of the secret or an entry
// from outside the volume.
func TestCopyRacingTheTenant(t *testing.T) {
	file, dir, fifo := outside(t)
	vol := filepath.Join(t.TempDir(), "vol")
	if err := os.MkdirAll(filepath.Join(vol, "sub", "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := os.WriteFile(filepath.Join(vol, "sub", fmt.Sprintf("steady-%d", i)), bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var top, nested []string
	for i := range 12 {
		top = append(top, fmt.Sprintf("r%d", i))
		nested = append(nested, fmt.Sprintf("sub/deeper/r%d", i))
	}

	stop := make(chan struct{})
	var swaps atomic.Int64
	var wg sync.WaitGroup
	for _, group := range [][]string{top[:6], top[6:], nested, {"sub/deeper"}} {
		wg.Go(func() { racer(vol, group, file, dir, fifo, stop, &swaps) })
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	work := t.TempDir()
	var changed int64
	const copies = 200
	for i := range copies {
		dst := filepath.Join(work, fmt.Sprintf("copy-%d", i))
		// A copy blocked in open(2) on a FIFO ignores its context: watch it
		// from outside.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		type result struct {
			stats Stats
			err   error
		}
		done := make(chan result, 1)
		go func() {
			stats, err := Tree(ctx, vol, dst, Options{NoSync: true})
			done <- result{stats, err}
		}()
		var stats Stats
		var err error
		select {
		case r := <-done:
			stats, err = r.stats, r.err
		case <-time.After(20 * time.Second):
			t.Fatalf("copy %d hung (blocked past its 10 s deadline)", i)
		}
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("copy %d hung for 10 s", i)
		}
		if err != nil {
			// A racing tenant may make a copy fail, never leak: check it anyway.
			t.Logf("copy %d: %v", i, err)
		}
		changed += stats.Changed
		assertNothingFromOutside(t, dst)
		if err := os.RemoveAll(dst); err != nil {
			t.Fatal(err)
		}
	}
	if swaps.Load() < copies {
		t.Fatalf("the racer swapped only %d times in %d copies; the test proved nothing", swaps.Load(), copies)
	}
	t.Logf("%d copies, %d swaps, %d entries seen changing mid-copy", copies, swaps.Load(), changed)
}

// assertNothingFromOutside fails if the copy holds the secret or a link
// that resolves outside it as anything but a symlink.
func assertNothingFromOutside(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if entry.Name() == "inner" && filepath.Dir(path) != root {
			// Only the tenant's own "inner" files may be here.
			data, err := os.ReadFile(path)
			if err == nil && bytes.Contains(data, secret) {
				t.Errorf("%s is the secret directory's file", path)
			}
		}
		if entry.Type().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(data, secret) {
				t.Errorf("%s holds bytes from outside the volume", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk copy %s: %v", root, err)
	}
}

// TestCopyNeverOpensDevicesOrFIFOs: a FIFO and a device node in a volume
// are recreated, never opened (opening the FIFO would block; a device node
// could be the host's disk).
func TestCopyNeverOpensDevicesOrFIFOs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("creating a device node needs root")
	}
	vol := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(vol, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// /dev/zero's numbers: reading it would never end.
	if err := unix.Mknod(filepath.Join(vol, "zero"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dst := filepath.Join(t.TempDir(), "copy")
	stats, err := Tree(ctx, vol, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if stats.Others != 2 || stats.Bytes != 0 {
		t.Fatalf("stats = %+v, want 2 special files recreated and no bytes read", stats)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dst, "zero"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 5) {
		t.Fatalf("device node copy: %+v, %v", st, err)
	}
}
