// Package region is what the packages of this module reach of a shm.Region
// that its users do not: the lock lines, the owner values locks record, the
// placement tags tools read, and the watches on attachments. Package shm
// implements it; Of turns a *shm.Region into it.
package region

import (
	"fmt"
	"time"

	"github.com/shmlock/shmlock/internal/line"
)

// LineSize is the size of a lock's line, which shm.LineSize is too.
const LineSize = 8 * line.Words

// Plumbing is a region's plumbing. Its methods are safe for concurrent use,
// as the Region's are.
type Plumbing interface {
	// Line returns the cache line at offset off of the data area as eight
	// 64-bit words, for placing a lock. off must be a multiple of
	// LineSize.
	Line(off int) (*[line.Words]uint64, error)
	// OwnerFor returns the value that the owner field of the lock at line
	// off holds while this attachment holds it: its owner ID in
	// shm.ModeProbe; in shm.ModeRobust the thread ID of the robust list
	// that links the line, which OwnerFor links on its first call for the
	// line. It fails on a read-only or closed region, and in
	// shm.ModeRobust with shm.ErrLimit if the attachment, or the process,
	// has locks on more lines than its lists hold.
	OwnerFor(off int) (uint32, error)
	// Place tags the line at off as holding a lock of kind k that
	// protects size bytes (0 for a Mutex; at most MaxPlacedSize), for
	// Placements to find. It is idempotent, and a Mutex placed on a
	// SeqLock's or Record's line accepts that tag (it is that lock's
	// writers' Mutex). It refuses, with shm.ErrInvalid, a line tagged as
	// another lock, one whose tag word holds something else (data placed
	// over it), a line inside the data of a lock placed up to 64 KiB
	// before it, and a read-only region.
	Place(off int, k Kind, size int) error
	// Placement returns the lock tagged at off, if any. A tag whose lock
	// would not fit the data area is no tag (a hostile or corrupt file).
	Placement(off int) (Placement, bool)
	// Placements lists the locks tagged in the data area, in offset order.
	// It reads only, and skips the holes of a sparse region file, so that
	// listing a large region does not bring its untouched pages into
	// memory.
	Placements() []Placement
	// Watch calls f once, in its own goroutine, when the process attached
	// as id exits, unless stop is called first: f never starts after stop
	// returns (stop does not wait for an f that has started). If the
	// attachment is known gone already (its slot was claimed again since),
	// f is called at once. If no watch is possible, f is never called.
	// Call Watch before the probe whose verdict you act on: a death before
	// the watch began is then seen by that probe.
	Watch(id uint32, f func()) (stop func())
	// ID returns this attachment's owner ID: its slot of the process table
	// and the slot's incarnation.
	ID() uint32
	// Slots returns the size of the process table.
	Slots() int
	// Created returns when the region was created, and by which PID. It
	// panics if the region was closed.
	Created() (time.Time, int32)
	// Attaches returns how many attachments the region has had since it
	// was created (it may lag by one while another process attaches). It
	// panics if the region was closed.
	Attaches() uint64
	// ReadOnly reports whether the region was opened read-only.
	ReadOnly() bool
	// Span is shm.Region.Bytes without the check of the region's Layout:
	// a lock's own bytes, for its package.
	Span(off, n int) ([]byte, error)
	// Probe judges whether the holder that owner, the owner field of a
	// lock word, names is still alive, and returns a shm.Holder (this
	// package cannot name shm's types). It reads only: recovering a lock
	// whose holder is Dead is the caller's step, a CAS from the exact
	// owner word it probed. After Close it says Unverifiable.
	Probe(owner uint32) any
	// Check reports whether the region file still has the size its
	// mapping needs (shm.ErrTruncated if something shrank it).
	Check() error
	// ProbeAttachment is Probe of an attachment named by its owner ID (ID),
	// in either mode: a shm.Holder.
	ProbeAttachment(id uint32) any
	// Slot returns this attachment's slot of the process table, 1..Slots.
	Slot() int
	// WatchAttachment is Watch in either mode (Watch does nothing in
	// shm.ModeRobust, where the kernel marks a dead holder's lock word):
	// for what the kernel does not mark, such as a reader's shares.
	WatchAttachment(id uint32, f func()) (stop func())
}

// Of returns the plumbing of r, a *shm.Region. Package shm sets it when it
// is initialised, before any Region exists.
var Of func(r any) Plumbing

// MaxPlacedSize is the largest data size a placed SeqLock or Record can
// have: the tag holds it in 24 bits of 8-byte words (just under 128 MiB).
const MaxPlacedSize = TagWords * 8

// TagWords is the most 8-byte words a placement tag records.
const TagWords = 1<<24 - 1

// Kind is the kind of lock at a tagged line.
type Kind uint8

// The kinds of lock a line can hold.
const (
	KindMutex   Kind = 1 + iota // shmlock.Mutex
	KindSeqLock                 // seqlock.SeqLock: one copy of the data after the line
	KindRecord                  // seqlock.Record: two copies of the data after the line
	KindRWMutex                 // shmlock.RWMutex: its claims and reader lines after the line
)

func (k Kind) String() string {
	switch k {
	case KindMutex:
		return "mutex"
	case KindSeqLock:
		return "seqlock"
	case KindRecord:
		return "record"
	case KindRWMutex:
		return "rwmutex"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Placement is a lock found in a region: the offset of its line in the data
// area, its kind, and the size of the data it protects (0 for a Mutex).
type Placement struct {
	Off  int  `json:"offset"`
	Kind Kind `json:"-"`
	Size int  `json:"size"`
}

// Bytes returns how many bytes of the data area the lock occupies from Off:
// its line, and its data rounded up to whole lines.
func (p Placement) Bytes() int {
	data := (p.Size + LineSize - 1) / LineSize * LineSize
	switch p.Kind {
	case KindSeqLock, KindRWMutex:
		return LineSize + data
	case KindRecord:
		return LineSize + 2*data
	}
	return LineSize
}
