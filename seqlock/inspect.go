package seqlock

import (
	"fmt"
	"sync/atomic"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// State is what Inspect reads of a SeqLock or Record at one moment.
type State struct {
	region.Placement
	Writer shmlock.State // the writers' Mutex

	// SeqLock: the sequence, odd while a write is open (or was left open by
	// a writer that died, until a reader or writer ends it), and whether the
	// record is dirty (readers get ErrDirty until a full write).
	Seq   uint64
	Dirty bool

	// Record: the published copy, and each copy's sequence (odd while it
	// is written, or after its writer died writing it; the published copy
	// is never odd).
	Published int
	CopySeqs  [2]uint64
}

// Inspect reads the SeqLock or Record placed at offset off of r, writing
// nothing, so r may be open read-only (shm.OpenReadOnly).
func Inspect(r *shm.Region, off int) (State, error) {
	p, ok := region.Of(r).Placement(off)
	if !ok || p.Kind == region.KindMutex {
		return State{}, &shm.Error{Op: "inspect", Path: r.Path(), Kind: shm.ErrInvalid,
			Detail: fmt.Sprintf("no SeqLock or Record is placed at offset %d", off)}
	}
	w, err := shmlock.Inspect(r, off)
	if err != nil {
		return State{}, err
	}
	line, _ := region.Of(r).Line(off)
	st := State{Placement: p, Writer: w}
	if p.Kind == region.KindSeqLock {
		st.Seq = atomic.LoadUint64(&line[wordSeq])
		st.Dirty = atomic.LoadUint64(&line[wordState])&stateDirty != 0
	} else {
		st.Published = int(atomic.LoadUint64(&line[wordPub]) & 1)
		st.CopySeqs = [2]uint64{atomic.LoadUint64(&line[wordSeq0]), atomic.LoadUint64(&line[wordSeq0+1])}
	}
	return st, nil
}
