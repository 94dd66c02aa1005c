package seqlock

import (
	"context"
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

// Record is a crash-consistent record of fixed size in a region: two copies
// and the index of the published one. See the package documentation.
type Record struct {
	writers
	pub  *uint64
	seq  [2]*uint64
	data [2][]uint64
}

// RecordSize returns the bytes a Record of n data bytes occupies in a region:
// the mutex's cache line, then two copies rounded up to cache lines.
func RecordSize(n int) int { return shm.LineSize + 2*roundLine(n) }

// NewRecord returns the Record of n data bytes at offset off of r's data area
// (a multiple of shm.LineSize). Zero bytes are a published record of zeros.
func NewRecord(r *shm.Region, off, n int) (*Record, error) {
	if err := checkSize(n); err != nil {
		return nil, err
	}
	wr, l, err := lockSlot(r, off, region.KindRecord, n)
	if err != nil {
		return nil, err
	}
	rec := &Record{writers: wr, pub: &l[wordPub], seq: [2]*uint64{&l[wordSeq0], &l[wordSeq0+1]}}
	for i := range rec.data {
		if rec.data[i], err = wordsAt(r, off+shm.LineSize+i*roundLine(n), n); err != nil {
			return nil, err
		}
	}
	closing.Track(rec.life, rec, (*Record).letGo)
	return rec, nil
}

// letGo points r at a line of its own (closing.Sentinel) when its region is
// closed: the published copy's sequence reads odd, which sends every read to
// the branch that reports the region closed. The data are never read again.
func (r *Record) letGo() {
	l := closing.Sentinel()
	r.own, r.pub, r.seq = &l[line.Owner], &l[wordPub], [2]*uint64{&l[wordSeq0], &l[wordSeq0+1]}
}

// Len returns the record's size in bytes.
func (r *Record) Len() int { return 8 * len(r.data[0]) }

// Read copies the published value into dst, which must be Len bytes long. It
// never waits for a writer, live or dead; it retries only when a writer
// rewrote the copy it was reading. If the published copy stays half written
// (odd) for a millisecond, which no writer ever leaves, the region was
// changed by something else: Read returns ErrCorrupt, and the next Write
// repairs the record.
func (r *Record) Read(dst []byte) error {
	if len(dst) != r.Len() {
		return fmt.Errorf("%w: buffer of %d bytes for a %d-byte record", ErrSize, len(dst), r.Len())
	}
	var (
		odd      uint64 // the published copy's index and odd sequence seen last
		oddSince time.Time
		spins    int
	)
	for {
		// Re-read the index every time: a copy whose writer died stays
		// odd forever, and only the published one is sure to settle.
		i := atomic.LoadUint64(r.pub) & 1
		fault.Hit(fault.RecordReadIndex)
		s1 := atomic.LoadUint64(r.seq[i])
		if s1&1 != 0 {
			if r.life.Closed() {
				return r.closedError("read")
			}
			// Being written: the index has moved on since we read it.
			// Unless it has not, for long: then nothing will settle.
			if atomic.LoadUint64(r.pub)&1 == i {
				if spins++; spins > readSpins {
					now := time.Now()
					if key := s1<<1 | i; key != odd {
						odd, oddSince = key, now
					} else if now.Sub(oddSince) > corruptAfter {
						return ErrCorrupt
					}
					runtime.Gosched()
				}
			}
			continue
		}
		// Copy i may have been written again, committed but not yet (or,
		// its writer dead, never) published, since we read the index: a
		// writer only writes the copy that is not published. So the index
		// must still name copy i now that its sequence is even.
		if atomic.LoadUint64(r.pub)&1 != i {
			continue
		}
		words.Load(dst, r.data[i])
		if atomic.LoadUint64(r.seq[i]) == s1 {
			return nil
		}
	}
}

// corruptAfter is how long a Record reader watches the published copy stay
// odd before it calls the record corrupt.
const corruptAfter = time.Millisecond

// Write locks the Record for writing, waiting until ctx is done. The Writer
// writes the copy that is not published, which starts as the published
// value; Commit before Release publishes it, Release without Commit discards
// it. Recovered on the Writer says the previous writer died; nothing needs
// repair, since what it wrote was never published, so Dirty is always false.
func (r *Record) Write(ctx context.Context) (Writer, error) {
	g, err := r.mu.Acquire(ctx)
	if err != nil {
		return Writer{}, err
	}
	p := atomic.LoadUint64(r.pub) & 1
	j := 1 - p
	// Make copy j's sequence odd before touching its data: a slow reader
	// still copying it (it was published two writes ago) sees the change.
	// A dead writer may have left it odd already: move it on all the same.
	sj := atomic.LoadUint64(r.seq[j])
	next := sj | 1
	if next == sj {
		next += 2
	}
	atomic.StoreUint64(r.seq[j], next)
	fault.Hit(fault.RecordOdd)
	words.Copy(r.data[j], r.data[p])
	fault.Hit(fault.RecordCopied)
	return Writer{g: g, w: &r.writers, r: r, data: r.data[j], j: j}, nil
}

// finish publishes copy j if the write was committed: its sequence goes
// even, then the index points at it. Without a commit copy j stays odd and
// unpublished, and the next writer starts over from the published copy. The
// caller then releases the lock.
func (r *Record) finish(j uint64, committed bool) {
	if committed {
		atomic.AddUint64(r.seq[j], 1)
		fault.Hit(fault.RecordEven)
		atomic.StoreUint64(r.pub, j)
		fault.Hit(fault.RecordPublished)
	}
}
