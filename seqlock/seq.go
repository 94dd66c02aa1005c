package seqlock

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/closing"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/internal/words"
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

// readHook, if set, runs before a waiting reader tries to recover the writer:
// tests stop a reader there.
var readHook atomic.Pointer[func()]

// SeqLock is a record of fixed size in a region, written under a robust
// mutex and read without locks. See the package documentation.
type SeqLock struct {
	writers
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
	wr, l, err := lockSlot(r, off, region.KindSeqLock, n)
	if err != nil {
		return nil, err
	}
	data, err := wordsAt(r, off+shm.LineSize, n)
	if err != nil {
		return nil, err
	}
	s := &SeqLock{writers: wr, seq: &l[wordSeq], state: &l[wordState], data: data}
	closing.Track(s.life, s, (*SeqLock).letGo)
	return s, nil
}

// letGo points s at a line of its own (closing.Sentinel) when its region is
// closed: an odd sequence, which sends every read to ReadContext, which
// reports the region closed. The data are never read again.
func (s *SeqLock) letGo() {
	l := closing.Sentinel()
	s.own, s.seq, s.state = &l[line.Owner], &l[wordSeq], &l[wordState]
}

// Len returns the record's size in bytes.
func (s *SeqLock) Len() int { return 8 * len(s.data) }

// Read copies the record into dst, which must be Len bytes long. It returns
// ErrDirty, with dst filled but not to be trusted, if the last write did not
// complete. It waits while a write is under way, and recovers the record if
// its writer is found dead.
func (s *SeqLock) Read(dst []byte) error {
	// One attempt here, the waiting and recovery in ReadContext: most
	// reads find no write under way, and skip its frame.
	if s1 := atomic.LoadUint64(s.seq); s1&1 == 0 && len(dst) == s.Len() {
		dirty := atomic.LoadUint64(s.state)&stateDirty != 0
		words.Load(dst, s.data)
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
// stopped, say), returning ctx.Err(). Read and ReadContext return an error
// matching shm.ErrClosed once the region is closed, also if Close begins
// while they wait.
func (s *SeqLock) ReadContext(ctx context.Context, dst []byte) error {
	// Close waits for the readers waiting here to leave.
	if !s.life.Enter(nil) {
		return s.closedError("read")
	}
	defer s.life.Leave(nil)
	if len(dst) != s.Len() {
		return fmt.Errorf("%w: buffer of %d bytes for a %d-byte record", ErrSize, len(dst), s.Len())
	}
	var (
		odd      uint64 // the odd sequence being waited out
		oddSince time.Time
		sleep    = time.Microsecond
	)
	for i := 0; ; i++ {
		if s.life.Closed() {
			return s.closedError("read")
		}
		s1 := atomic.LoadUint64(s.seq)
		if s1&1 == 0 {
			dirty := atomic.LoadUint64(s.state)&stateDirty != 0
			words.Load(dst, s.data)
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
			if f := readHook.Load(); f != nil {
				(*f)()
			}
			if s.recoverDeadWriter() {
				return s.closedError("read")
			}
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
// writer alive writes nothing. It reports whether it found the region
// closed: Close may begin while a reader is here (Close waits for it), and
// the Mutex's methods then panic with ErrClosed.
func (s *SeqLock) recoverDeadWriter() (closed bool) {
	defer func() {
		if e := recover(); e != nil {
			if err, ok := e.(error); !ok || !errors.Is(err, shm.ErrClosed) {
				panic(e)
			}
			closed = true
		}
	}()
	g, ok := s.mu.TryAcquire()
	if !ok {
		return
	}
	fault.Hit(fault.SeqReaderTookOver)
	s.closeDeadWrite()
	g.Commit()
	g.Release()
	return false
}

// closeDeadWrite marks dirty a write that was left open (odd), and closes it.
// The caller holds the lock. The state changes while the sequence is odd.
func (s *SeqLock) closeDeadWrite() {
	if atomic.LoadUint64(s.seq)&1 != 0 {
		atomic.StoreUint64(s.state, stateDirty)
		fault.Hit(fault.SeqRepairDirty)
		atomic.AddUint64(s.seq, 1)
	}
}

// Write locks the SeqLock for writing, waiting until ctx is done. If the
// previous writer died mid-write, Recovered says so (unless a reader ended
// that write first), and Dirty says the record is dirty: half written by a
// writer that died or aborted. A dirty record stays dirty until a writer
// Stores the whole of it and commits; StoreAt alone cannot know that every
// byte is new. The caller must Release the Writer.
func (s *SeqLock) Write(ctx context.Context) (Writer, error) {
	g, err := s.mu.Acquire(ctx)
	if err != nil {
		return Writer{}, err
	}
	s.closeDeadWrite()
	dirty := atomic.LoadUint64(s.state)&stateDirty != 0
	atomic.AddUint64(s.seq, 1) // odd: readers wait from here
	fault.Hit(fault.SeqWriteOdd)
	return Writer{g: g, w: &s.writers, s: s, data: s.data, dirty: dirty}, nil
}

// finish ends a write: the state is set while the sequence is still odd,
// then the sequence goes even; the caller then releases the lock. The record
// is clean only if the write committed and left no dirt behind.
func (s *SeqLock) finish(clean bool) {
	var st uint64
	if !clean {
		st = stateDirty
	}
	atomic.StoreUint64(s.state, st)
	fault.Hit(fault.SeqReleaseState)
	atomic.AddUint64(s.seq, 1)
	fault.Hit(fault.SeqReleaseEven)
}
