package fscopy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// longChain makes depth directories nested in dir, each with a name of
// the longest length a name may have (255 bytes), by descriptor.
func longChain(t testing.TB, dir string, depth int) {
	t.Helper()
	name := strings.Repeat("n", 255)
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range depth {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			_ = unix.Close(fd)
			t.Fatal(err)
		}
		child, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		_ = unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = child
	}
	_ = unix.Close(fd)
}

// The memory RemoveTree holds does not grow with the names on the way
// down: a tenant's chain of long names must not make the driver run out
// of memory (256Mi) deleting its volume. Each level may cost its identity
// (device and inode) and a counter, not its name.
func TestRemoveTreeMemoryPerLevelIsSmall(t *testing.T) {
	const depth = 5000
	root := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	longChain(t, root, depth)

	// Measure the live heap at the bottom of the chain, where the walk
	// holds the most; the walk waits in the hook meanwhile, so what is
	// measured is what it holds, not garbage it is making.
	var base, bottom runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	testHookDescended = func(levels int) {
		if levels == depth { // the last directory, empty, is removed without going into it
			runtime.GC()
			runtime.ReadMemStats(&bottom)
		}
	}
	defer func() { testHookDescended = nil }()
	err := RemoveTree(root)
	if err != nil {
		t.Fatalf("RemoveTree: %v", err)
	}
	if _, err := os.Lstat(root); !os.IsNotExist(err) {
		t.Fatalf("the tree survived: %v", err)
	}
	if bottom.HeapAlloc == 0 {
		t.Fatal("the walk never reached the bottom of the chain")
	}
	grown := int64(bottom.HeapAlloc) - int64(base.HeapAlloc)
	if perLevel := grown / depth; perLevel > 64 {
		t.Fatalf("removing a %d-deep chain of 255-byte names grew the live heap by %d bytes, %d per level; want at most 64",
			depth, grown, perLevel)
	}
}

// A writer that keeps filling the tree (a pod that still has the volume
// mounted) cannot keep RemoveTree running: it ends, having either won the
// race or given up on a directory that kept being written to
// (ErrContended, which the caller retries later). The refilled-each-time
// test below is the deterministic form of this race.
func TestRemoveTreeEndsAgainstAWriterThatNeverStops(t *testing.T) {
	root := filepath.Join(t.TempDir(), "tree")
	busy := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(busy, 0o755); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var writers sync.WaitGroup
	warmedUp := make(chan struct{}, 4)
	for range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if i == 100 {
					warmedUp <- struct{}{}
				}
				// Errors are expected: the walk removes what is written.
				_ = os.MkdirAll(busy, 0o755)
				_ = os.WriteFile(filepath.Join(busy, "f"+strconv.Itoa(i%8)), []byte("x"), 0o644)
				_ = os.Mkdir(filepath.Join(busy, "d"), 0o755)
			}
		}()
	}
	for range 4 {
		<-warmedUp
	}
	writer := &writers
	finished := make(chan error, 1)
	go func() { finished <- RemoveTree(root) }()
	var err error
	select {
	case err = <-finished:
	case <-time.After(time.Minute):
		close(stop)
		writer.Wait()
		t.Fatal("RemoveTree still runs after a minute against a writer")
	}
	close(stop)
	writer.Wait()
	// It may win the race (nil) or give up (ErrContended); what it must
	// not do is run forever.
	if err != nil && !errors.Is(err, ErrContended) {
		t.Fatalf("RemoveTree against a writer: %v, want nil or ErrContended", err)
	}
	if err := RemoveTree(root); err != nil {
		t.Fatalf("RemoveTree once the writer stopped: %v", err)
	}
}

// A writer that always wins the race, refilling the directory the walk
// has just emptied before the walk can remove it, gets ErrContended
// after a bounded number of walks down into it, not a livelock.
func TestRemoveTreeGivesUpOnADirectoryRefilledEachTime(t *testing.T) {
	root := filepath.Join(t.TempDir(), "tree")
	refilled := filepath.Join(root, "a", "b", "f")
	mustWrite(t, refilled)
	// Past this many refills the walk is taken to be livelocked: the
	// writer stops so that the test ends either way.
	const livelock = 10000
	refills := 0
	testHookAscended = func() {
		if refills < livelock && os.WriteFile(refilled, []byte("x"), 0o644) == nil {
			refills++
		}
	}
	defer func() { testHookAscended = nil }()
	err := RemoveTree(root)
	if refills >= livelock {
		t.Fatalf("RemoveTree walked into a directory refilled each time %d times, returning %v", refills, err)
	}
	if !errors.Is(err, ErrContended) {
		t.Fatalf("RemoveTree of a directory refilled each time: %v, want ErrContended", err)
	}
}

// RemoveTreeContext stops between entries once its context is done.
func TestRemoveTreeContextStopsWhenCancelled(t *testing.T) {
	root := filepath.Join(t.TempDir(), "tree")
	for _, f := range []string{"a/f", "b/c/f", "g"} {
		mustWrite(t, filepath.Join(root, f))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := RemoveTreeContext(ctx, root); !errors.Is(err, context.Canceled) {
		t.Fatalf("RemoveTreeContext with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := os.Stat(filepath.Join(root, "b", "c", "f")); err != nil {
		t.Fatalf("a cancelled RemoveTreeContext went on removing: %v", err)
	}
}
