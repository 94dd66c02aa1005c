// Package seqlock publishes a record in shared memory to readers in any
// number of processes, who never write shared memory and never take a lock,
// and never accept a torn record.
//
// Two kinds, both written under a robust shmlock.Mutex, so that a writer that
// dies is recovered as a dead mutex holder is:
//
//   - SeqLock keeps one copy of the data beside a sequence counter. Readers
//     retry while a write is under way. A writer that panics or dies
//     mid-write leaves the record dirty: readers are told (ErrDirty), never
//     handed the bytes as valid, until a writer completes a full write.
//   - Record keeps two copies and the index of the published one (the Linux
//     seqcount latch). A writer fills the unpublished copy, starting from the
//     published value, and publishes it with one store; a writer that dies or
//     panics at any point leaves the published value intact, and readers never
//     wait for a writer. It costs twice the memory and one extra copy per
//     write.
//
// Data are stored in 64-bit words, so sizes are positive multiples of 8
// bytes (others are refused with ErrSize). Readers copy at memory speed on
// amd64, and word by word with atomic loads elsewhere (see load).
package seqlock

// The SeqLock's steps (Write, closeDeadWrite, finish, recoverDeadWriter) are
// modelled in ../testdata/mutex.pml under the names of the fault.Point marking each.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"unsafe"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/closing"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// MaxSize is the largest data size a SeqLock or Record can have: its line's
// placement tag records the size in 24 bits of 8-byte words (just under 128
// MiB).
const MaxSize = (1<<24 - 1) * 8

var _ = [1]struct{}{}[MaxSize-region.MaxPlacedSize]

var (
	// ErrDirty: the last write to a SeqLock did not complete (its writer
	// panicked or died); the data may be torn. It stays so until a writer
	// completes a full write.
	ErrDirty = errors.New("seqlock: record is dirty: its last write did not complete")
	// ErrSize: a data size that is not a positive multiple of 8, or a buffer
	// of the wrong length.
	ErrSize = errors.New("seqlock: bad size")
	// ErrCorrupt: a Record whose published copy stays half written, which
	// no writer, live or dead, leaves behind: the region's bytes were
	// changed by something else.
	ErrCorrupt = errors.New("seqlock: record is corrupt: its published copy stays half written")
)

// The words of the mutex's cache line that belong to the object it protects
// (internal/line: words 4..6).
const (
	wordSeq   = line.Object     // SeqLock: the sequence, odd while a write is under way
	wordState = line.Object + 1 // SeqLock: stateDirty while the last write did not complete

	wordPub  = line.Object     // Record: the index (0 or 1) of the published copy
	wordSeq0 = line.Object + 1 // Record: the sequence of copy 0 (copy 1: wordSeq0+1)
)

// stateDirty is set in the state word while the sequence is odd, so a reader
// that sees the same even sequence before and after its copy sees a state that
// belongs to the data it copied.
const stateDirty = 1

// closedError is the error, or the panic value, of a use of a SeqLock or
// Record after its region was closed.
func closedError(r *shm.Region, op string) error {
	return &shm.Error{Op: op, Path: r.Path(), Kind: shm.ErrClosed}
}

func roundLine(n int) int { return (n + shm.LineSize - 1) / shm.LineSize * shm.LineSize }

func checkSize(n int) error {
	if n <= 0 || n%8 != 0 {
		return fmt.Errorf("%w: %d is not a positive multiple of 8", ErrSize, n)
	}
	if n > region.MaxPlacedSize {
		return fmt.Errorf("%w: %d bytes; at most %d (seqlock.MaxSize)", ErrSize, n, MaxSize)
	}
	return nil
}

// wordsAt returns the n-byte data area at off as 64-bit words.
func wordsAt(r *shm.Region, off, n int) ([]uint64, error) {
	b, err := region.Of(r).Span(off, n)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n/8), nil
}

// storeAt stores src at byte offset off of the words w, merging partial words
// at either end. Only a writer, who holds the lock, calls it.
func storeAt(w []uint64, off int, src []byte, mid fault.Point) error {
	if off < 0 || off > 8*len(w) || len(src) > 8*len(w)-off {
		return fmt.Errorf("%w: bytes [%d, %d) outside a %d-byte record", ErrSize, off, off+len(src), 8*len(w))
	}
	for len(src) > 0 {
		i, o := off/8, off%8
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], atomic.LoadUint64(&w[i]))
		n := copy(b[o:], src)
		atomic.StoreUint64(&w[i], binary.NativeEndian.Uint64(b[:]))
		src, off = src[n:], off+n
		if len(src) > 0 {
			fault.Hit(mid)
		}
	}
	return nil
}

// writers is what a SeqLock and a Record share: the writers' Mutex, which
// is the first word of the lock's line, and the region.
type writers struct {
	mu   *shmlock.Mutex
	own  *uint64 // the Mutex's owner word
	self uint64  // its owner field while this attachment holds it
	r    *shm.Region
	off  int
	life *closing.Closing
}

// lockSlot places a lock of kind k with n data bytes at off, and returns its
// writers and its line.
func lockSlot(r *shm.Region, off int, k region.Kind, n int) (writers, *[8]uint64, error) {
	// The whole lock must fit before anything is written: a refused
	// constructor leaves no tag behind.
	if _, err := region.Of(r).Span(off, region.Placement{Off: off, Kind: k, Size: n}.Bytes()); err != nil {
		return writers{}, nil, err
	}
	// The SeqLock's or Record's tag first: placing it gives the line and
	// the data storage, in one step, and the writers' Mutex accepts it.
	if err := region.Of(r).Place(off, k, n); err != nil {
		return writers{}, nil, err
	}
	mu, err := shmlock.New(r, off)
	if err != nil {
		return writers{}, nil, err
	}
	// What the writers' Mutex's owner field holds while this attachment
	// holds it: a Writer checks its hold by it (Writer.usable). New asked
	// for it already, so it cannot fail now.
	self, _ := region.Of(r).OwnerFor(off)
	l, _ := region.Of(r).Line(off)
	return writers{mu: mu, own: &l[line.Owner], self: uint64(self), r: r, off: off, life: closing.Of(r)}, l, nil
}

// closedError is the error, or the panic value, of a use of the lock after
// its region was closed.
func (w *writers) closedError(op string) error { return closedError(w.r, op) }

// name is the lock's name in errors: its region and offset.
func (w *writers) name() string { return w.r.Path() + "@" + strconv.Itoa(w.off) }
