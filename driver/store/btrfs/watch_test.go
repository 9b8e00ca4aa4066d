package btrfs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seenCorrection is a Correction and when the watcher reported it.
type seenCorrection struct {
	Correction
	at time.Time
}

// startWatch runs the watcher on volumesDir until the test ends and
// returns once its first full pass is done.
func startWatch(t *testing.T, b *Backend, volumesDir string, opts watchOptions) <-chan seenCorrection {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	seen := make(chan seenCorrection, 1024)
	started := make(chan struct{})
	opts.started = func() { close(started) }
	done := make(chan error, 1)
	go func() {
		done <- b.watch(ctx, volumesDir, func(c Correction) { seen <- seenCorrection{c, time.Now()} }, opts)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("Watch returned before its first pass: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no first pass after 10s")
	}
	return seen
}

// awaitCorrection waits for the watcher's report on the subvolume id.
func awaitCorrection(t *testing.T, seen <-chan seenCorrection, id uint64, within time.Duration) seenCorrection {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case c := <-seen:
			if c.ID == id {
				return c
			}
		case <-deadline:
			t.Fatalf("no correction of subvolume %d within %v", id, within)
		}
	}
}

var (
	notified = watchOptions{notify: true, interval: time.Second}
	polled   = watchOptions{interval: time.Second}
)

// Every way of nesting a subvolume outside its volume's limit group is
// found and corrected, with fanotify and by the poll alone: a subvolume
// nested while the watcher was not running, a zeroed inheritance list, a
// neighbour's group, a subvolume nested in a nested one, a snapshot with
// an inheritance list, in a volume that is a restore. Afterwards each one
// is a member of exactly its volume's limit group.
func TestWatchCorrectsNestedSubvolumes(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts watchOptions
	}{{"fanotify", notified}, {"poll", polled}} {
		t.Run(mode.name, func(t *testing.T) {
			b, dir := openTestBackend(t)
			volumes := filepath.Join(dir, "volumes")
			if err := os.Mkdir(volumes, 0o755); err != nil {
				t.Fatal(err)
			}
			vol, neighbour, restore := filepath.Join(volumes, "vol"), filepath.Join(volumes, "neighbour"), filepath.Join(volumes, "restore")
			for _, path := range []string{vol, neighbour} {
				if err := b.Create("", path, 32<<20); err != nil {
					t.Fatal(err)
				}
			}
			neighbourID := mustSubvolumeID(t, neighbour)
			if err := createSubvolumeInherit(filepath.Join(vol, "before"), []uint64{}); err != nil {
				t.Fatal(err)
			}
			seen := startWatch(t, b, volumes, mode.opts)
			if c := awaitCorrection(t, seen, mustSubvolumeID(t, filepath.Join(vol, "before")), 5*time.Second); c.Nested != "before" || !c.Joined {
				t.Errorf("nested before the watcher started: %+v", c)
			}
			if err := os.Mkdir(filepath.Join(vol, "dir"), 0o755); err != nil {
				t.Fatal(err)
			}

			for _, tt := range []struct {
				name, volume, nested string
				create               func(path string) error
				detached             []string
			}{
				{name: "zeroed inheritance list", volume: vol, nested: "escape",
					create: func(path string) error { return createSubvolumeInherit(path, []uint64{}) }},
				{name: "neighbour's limit group", volume: vol, nested: "charge",
					create:   func(path string) error { return createSubvolumeInherit(path, []uint64{qgroupID(1, neighbourID)}) },
					detached: []string{qgroupName(qgroupID(1, neighbourID))}},
				{name: "nested in a nested subvolume", volume: vol, nested: "escape/deeper",
					create: func(path string) error { return createSubvolumeInherit(path, []uint64{}) }},
				{name: "snapshot with an inheritance list", volume: vol, nested: "dir/snap",
					create: func(path string) error { return createInherit(path, filepath.Join(vol, "escape"), []uint64{}) }},
				{name: "in a restore", volume: restore, nested: "escape",
					create: func(path string) error {
						if err := b.Clone(context.Background(), vol+"/escape/deeper", "", restore, 32<<20, nil); err != nil {
							return err
						}
						return createSubvolumeInherit(path, []uint64{})
					}},
			} {
				path := filepath.Join(tt.volume, tt.nested)
				start := time.Now()
				if err := tt.create(path); err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
				created := time.Now()
				c := awaitCorrection(t, seen, mustSubvolumeID(t, path), 5*time.Second)
				t.Logf("%s: corrected %v after the create ioctl returned (it took %v)", tt.name, c.at.Sub(created), created.Sub(start))
				if c.Volume != tt.volume || c.Nested != tt.nested || !c.Joined || !slices.Equal(c.Detached, tt.detached) {
					t.Errorf("%s: reported %+v, want volume %s, nested %s, joined, detached %v", tt.name, c.Correction, tt.volume, tt.nested, tt.detached)
				}
				parents, err := qgroupParents(b.root, qgroupID(0, c.ID))
				if want := []uint64{qgroupID(1, mustSubvolumeID(t, tt.volume))}; err != nil || !slices.Equal(parents, want) {
					t.Errorf("%s: member of %v (%v), want exactly %v", tt.name, parents, err, want)
				}
			}
		})
	}
}

func mustSubvolumeID(t *testing.T, path string) uint64 {
	t.Helper()
	id, err := SubvolumeID(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// syncedUsage commits, then reads the volume's usage.
func syncedUsage(t *testing.T, b *Backend, volume string) int64 {
	t.Helper()
	if err := unix.Syncfs(int(b.root.Fd())); err != nil {
		t.Fatal(err)
	}
	used, err := b.Usage(volume)
	if err != nil {
		t.Fatal(err)
	}
	return used
}
