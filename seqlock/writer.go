package seqlock

import (
	"fmt"
	"sync/atomic"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/guard"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/words"
)

// Writer is a write in progress on a SeqLock or a Record, from Write until
// Release; it holds the writers' Mutex. Commit before Release publishes what
// was stored; Release without Commit (a panic, an early return) does not: a
// SeqLock is left dirty, a Record keeps its published value.
//
// A Writer is a value, so that writing allocates nothing. Release it through
// the variable Write returned it in (defer w.Release()), and do not copy it:
// a copy is a second handle on the same write, and releasing both panics
// with an error matching shmlock.ErrNotHeld.
type Writer struct {
	g     guard.Guard
	w     *writers // the lock's: s's or r's
	s     *SeqLock // one of s and r is set
	r     *Record
	data  []uint64 // the words this write stores: the SeqLock's, or the Record's copy j
	j     uint64   // Record: the copy being written
	dirty bool     // SeqLock: the record is dirty, and this write has not stored all of it
}

// Recovered reports whether the previous writer died, or was broken by an
// administrator, without releasing (see guard.Guard.Recovered).
func (w *Writer) Recovered() bool { return w.g.Recovered() }

// Fence returns the write's fencing token: the writers' Mutex's (see
// guard.Guard.Fence).
func (w *Writer) Fence() uint64 { return w.g.Fence() }

// Dirty reports whether a SeqLock is dirty: the last write before this one
// did not complete, and this one has not yet stored the whole record. It is
// always false for a Record.
func (w *Writer) Dirty() bool { return w.dirty }

// Commit marks the write as finished, so that Release publishes it. It does
// not release the lock.
func (w *Writer) Commit() { w.g.Commit() }

// Store replaces the whole value with src, which must be Len bytes long. On
// a SeqLock it is the write that makes a dirty record clean (at Commit).
func (w *Writer) Store(src []byte) error {
	if err := w.usable("store"); err != nil {
		return err
	}
	if len(src) != 8*len(w.data) {
		return fmt.Errorf("%w: %d bytes for a %d-byte record", ErrSize, len(src), 8*len(w.data))
	}
	if err := storeAt(w.data, 0, src, w.midData()); err != nil {
		return err
	}
	w.dirty = false
	return nil
}

// StoreAt writes src at byte offset off of the value being written.
func (w *Writer) StoreAt(off int, src []byte) error {
	if err := w.usable("store"); err != nil {
		return err
	}
	return storeAt(w.data, off, src, w.midData())
}

// Load copies the value being written, as it is now, into dst, which must be
// Len bytes long.
func (w *Writer) Load(dst []byte) error {
	if err := w.usable("load"); err != nil {
		return err
	}
	if len(dst) != 8*len(w.data) {
		return fmt.Errorf("%w: buffer of %d bytes for a %d-byte record", ErrSize, len(dst), 8*len(w.data))
	}
	words.Load(dst, w.data)
	return nil
}

// Release ends the write, the first time it is called; later calls do
// nothing. It publishes what was stored if Commit was called (see Writer),
// then releases the writers' Mutex. It panics if the region was closed, and
// if the write's hold of the Mutex is gone (a copy of the Writer released it,
// or an administrator broke it): it then writes nothing, since another
// writer may be under way.
func (w *Writer) Release() {
	if w.g.Released() || w.w == nil {
		return
	}
	if err := w.usable("release"); err != nil {
		panic(err)
	}
	if w.s != nil {
		w.s.finish(w.g.Committed() && !w.dirty)
	} else {
		w.r.finish(w.j, w.g.Committed())
	}
	w.g.Release()
}

// usable returns the error of a use of w after its region was closed, after
// Release, or once the write's hold of the writers' Mutex is gone (a copy of
// w released it, or Break freed it): another writer may be under way, so w
// must write nothing. The hold is w's while the word is the one its
// acquisition installed but for the waiters bit: this attachment's owner and
// w's generation, the test a Guard's release makes. While the hold is w's,
// nobody else writes the word but to set its waiters bit, so the check stays
// true until w releases it or an administrator breaks it.
func (w *Writer) usable(op string) error {
	l := w.w
	switch {
	case l == nil || w.g.Released():
		return fmt.Errorf("seqlock: %s after Release: %w", op, shmlock.ErrNotHeld)
	case l.life.Closed():
		return l.closedError(op)
	}
	if o := atomic.LoadUint64(l.own); o&^line.Waiters != w.g.Fence()<<32|l.self {
		return &shmlock.NotHeldError{Lock: l.name(), Owner: o}
	}
	return nil
}

// midData is the fault point between two words of a Store.
func (w *Writer) midData() fault.Point {
	if w.s != nil {
		return fault.SeqWriteMidData
	}
	return fault.RecordMidData
}
