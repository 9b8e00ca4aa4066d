package store

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Locks are flock(2)s on files under locks/. flock conflicts between open
// file descriptions, so each lock excludes other goroutines of this process
// as well as other processes sharing the pool (zone pools), and the kernel
// drops it when a process dies: a crash never leaves a lock behind.
//
// Two locks per object:
//   - locks/<id>, exclusive: whoever changes the object (create, fill,
//     expand, delete) holds it for the whole change;
//   - locks/<id>.src, the source lease: copies that read the object (a
//     snapshot of a volume, a restore of a snapshot, a clone) hold it shared
//     while they read, and Delete takes it exclusive, so an object is never
//     removed under a copy that would then finish with half its data.

// objectLock is one held flock.
type objectLock struct{ file *os.File }

func (l *objectLock) unlock() {
	if l != nil {
		l.file.Close()
	}
}

// flock takes a lock on locks/<name>, opened beneath the pool's root: a
// symlink planted there (even a dangling one, which O_CREAT would follow
// to create a file wherever it points) is refused with ErrForeign.
func (p *Pool) flock(name string, how int) (*objectLock, error) {
	f, err := p.openRegular("locks/"+name, unix.O_RDONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrInFlight
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return &objectLock{file: f}, nil
}

// tryLock takes the object's exclusive lock or fails with ErrInFlight.
func (p *Pool) tryLock(id string) (*objectLock, error) {
	lock, err := p.flock(id, unix.LOCK_EX)
	if errors.Is(err, ErrInFlight) {
		return nil, fmt.Errorf("%s: %w", id, ErrInFlight)
	}
	return lock, err
}

// readLease takes a shared source lease on id: the object cannot be deleted
// until it is released. It fails with ErrInFlight while id is being deleted.
func (p *Pool) readLease(id string) (*objectLock, error) {
	lock, err := p.flock(id+".src", unix.LOCK_SH)
	if errors.Is(err, ErrInFlight) {
		return nil, fmt.Errorf("%s is being deleted: %w", id, ErrInFlight)
	}
	return lock, err
}

// deleteLease takes the source lease exclusively before id is deleted. It
// fails with ErrInFlight while a copy reads from id.
func (p *Pool) deleteLease(id string) (*objectLock, error) {
	lock, err := p.flock(id+".src", unix.LOCK_EX)
	if errors.Is(err, ErrInFlight) {
		return nil, fmt.Errorf("%s: a snapshot, restore or clone is being copied from it: %w", id, ErrInFlight)
	}
	return lock, err
}

// withPoolLock runs fn holding the pool-wide lock that guards capacity
// accounting against concurrent creators in this and other processes. fn
// must do O(objects) work at most (reading metadata, statfs), never O(data):
// every create and expand in the pool waits for it.
func (p *Pool) withPoolLock(fn func() error) error {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	f, err := p.openRegular("locks/.pool", unix.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open pool lock: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock pool: %w", err)
	}
	return fn()
}
