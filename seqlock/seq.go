package seqlock

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/guard"
	"github.com/shmlock/shmlock/shm"
)

// How a reader waits out an odd sequence: it spins, then sleeps with a
// backoff; once the same write has been under way for probeAfter it probes
// the writer at every round, and takes the lock over if the writer is dead.
const (
	readSpins  = 64
	maxSleep   = time.Millisecond
	probeAfter = time.Millisecond
)

// SeqLock is a record of fixed size in a region, written under a robust
// mutex and read without locks. See the package documentation.
type SeqLock struct {
	mu    *shmlock.Mutex
	seq   *uint64
	state *uint64
	data  []uint64
}

// SeqLockSize returns the bytes a SeqLock of n data bytes occupies in a
// region: the mutex's cache line, then the data rounded up to cache lines.
func SeqLockSize(n int) int { return shm.LineSize + roundLine(n) }

// NewSeqLock returns the SeqLock of n data bytes at offset off of r's data
// area (a multiple of shm.LineSize). Zero bytes are a clean record of zeros.
func NewSeqLock(r *shm.Region, off, n int) (*SeqLock, error) {
	if err := checkSize(n); err != nil {
		return nil, err
	}
	mu, line, err := lockSlot(r, off)
	if err != nil {
		return nil, err
	}
	data, err := words(r, off+shm.LineSize, n)
	if err != nil {
		return nil, err
	}
	return &SeqLock{mu: mu, seq: &line[wordSeq], state: &line[wordState], data: data}, nil
}

// Len returns the record's size in bytes.
func (s *SeqLock) Len() int { return 8 * len(s.data) }

// Mutex returns the writers' lock, for inspection.
func (s *SeqLock) Mutex() *shmlock.Mutex { return s.mu }

// Read copies the record into dst, which must be Len bytes long. It returns
// ErrDirty, with dst filled but not to be trusted, if the last write did not
// complete. It waits while a write is under way, and recovers the record if
// its writer is found dead.
func (s *SeqLock) Read(dst []byte) error {
	// One attempt here, the waiting and recovery in ReadContext: most
	// reads find no write under way, and skip its frame.
	if s1 := atomic.LoadUint64(s.seq); s1&1 == 0 && len(dst) == s.Len() {
		dirty := atomic.LoadUint64(s.state)&stateDirty != 0
		load(dst, s.data)
		if atomic.LoadUint64(s.seq) == s1 {
			if dirty {
				return ErrDirty
			}
			return nil
		}
	}
	return s.ReadContext(context.Background(), dst)
}

// ReadContext is Read that gives up when ctx is done (a live writer that is
// stopped, say), returning ctx.Err().
func (s *SeqLock) ReadContext(ctx context.Context, dst []byte) error {
	if len(dst) != s.Len() {
		return fmt.Errorf("%w: buffer of %d bytes for a %d-byte record", ErrSize, len(dst), s.Len())
	}
	var (
		odd      uint64 // the odd sequence being waited out
		oddSince time.Time
		sleep    = time.Microsecond
	)
	for i := 0; ; i++ {
		s1 := atomic.LoadUint64(s.seq)
		if s1&1 == 0 {
			dirty := atomic.LoadUint64(s.state)&stateDirty != 0
			load(dst, s.data)
			if atomic.LoadUint64(s.seq) != s1 {
				continue // a write began meanwhile
			}
			if dirty {
				return ErrDirty
			}
			return nil
		}
		// A write is under way, or its writer died.
		if i < readSpins {
			if i%16 == 15 {
				runtime.Gosched()
			}
			continue
		}
		now := time.Now()
		if s1 != odd {
			odd, oddSince, sleep = s1, now, time.Microsecond
		}
		if now.Sub(oddSince) >= probeAfter {
			s.recoverDeadWriter()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, maxSleep)
	}
}

// recoverDeadWriter ends the write of a writer that died, as a writer would:
// it takes the lock only if the writer is dead (or gone without releasing),
// marks the record dirty and makes the sequence even. A reader that finds the
// writer alive writes nothing.
func (s *SeqLock) recoverDeadWriter() {
	g, ok := s.mu.TryAcquire()
	if !ok {
		return
	}
	s.closeDeadWrite()
	g.Commit()
	g.Release()
}

// closeDeadWrite marks dirty a write that was left open (odd), and closes it.
// The caller holds the lock. The state changes while the sequence is odd.
func (s *SeqLock) closeDeadWrite() {
	if atomic.LoadUint64(s.seq)&1 != 0 {
		atomic.StoreUint64(s.state, stateDirty)
		atomic.AddUint64(s.seq, 1)
	}
}

// Writer is a write in progress on a SeqLock: the sequence is odd from Write
// until Release. Commit before Release publishes the record as clean;
// Release without Commit (a panic, an early return) leaves it dirty.
type Writer struct {
	*guard.Guard
	s *SeqLock
}

// Write locks the SeqLock for writing, waiting until ctx is done. If the
// previous writer died mid-write, the record is dirty and the Writer's
// Recovered says so. The caller must Release the Writer.
func (s *SeqLock) Write(ctx context.Context) (*Writer, error) {
	g, err := s.mu.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	s.closeDeadWrite()
	atomic.AddUint64(s.seq, 1) // odd: readers wait from here
	return &Writer{Guard: guard.New(seqRelease{s}, g.Recovered(), g.Fence()), s: s}, nil
}

// Store replaces the whole record with src, which must be Len bytes long.
func (w *Writer) Store(src []byte) error {
	if len(src) != w.s.Len() {
		return fmt.Errorf("%w: %d bytes for a %d-byte record", ErrSize, len(src), w.s.Len())
	}
	return storeAt(w.s.data, 0, src)
}

// StoreAt writes src at byte offset off of the record.
func (w *Writer) StoreAt(off int, src []byte) error { return storeAt(w.s.data, off, src) }

// Load copies the record as it is now, mid-write, into dst.
func (w *Writer) Load(dst []byte) { load(dst, w.s.data) }

type seqRelease struct{ s *SeqLock }

// Release ends a write: the state is set while the sequence is still odd,
// then the sequence goes even, then the lock is released.
func (r seqRelease) Release(committed bool) {
	var st uint64
	if !committed {
		st = stateDirty
	}
	atomic.StoreUint64(r.s.state, st)
	atomic.AddUint64(r.s.seq, 1)
	r.s.mu.Unlock()
}
