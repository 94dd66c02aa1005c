package shm

import (
	"time"

	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
)

// plumbing is a Region as the module's packages see it (region.Plumbing):
// the lock lines, owner values, tags and watches that are not for users.
// It is one pointer, so that making it a region.Plumbing allocates nothing.
type plumbing struct{ r *Region }

func init() {
	region.Of = func(x any) region.Plumbing { return plumbing{x.(*Region)} }
}

func (p plumbing) Line(off int) (*[line.Words]uint64, error) { return p.r.lockLine(off) }
func (p plumbing) OwnerFor(off int) (uint32, error)          { return p.r.ownerFor(off) }
func (p plumbing) Place(off int, k region.Kind, size int) error {
	return p.r.place(off, k, size)
}
func (p plumbing) Placement(off int) (region.Placement, bool) { return p.r.placement(off) }
func (p plumbing) Placements() []region.Placement             { return p.r.placements() }
func (p plumbing) Watch(id uint32, f func()) (stop func())    { return p.r.watchID(id, f) }
func (p plumbing) ID() uint32                                 { return p.r.ownerID() }
func (p plumbing) Slots() int                                 { return p.r.numSlots() }
func (p plumbing) Created() (time.Time, int32)                { return p.r.created() }
func (p plumbing) Attaches() uint64                           { return p.r.attaches() }
func (p plumbing) ReadOnly() bool                             { return p.r.isReadOnly() }
func (p plumbing) Span(off, n int) ([]byte, error)            { return p.r.span(off, n) }
func (p plumbing) Probe(owner uint32) any                     { return p.r.probe(owner) }
func (p plumbing) Check() error                               { return p.r.check("check") }
func (p plumbing) ProbeAttachment(id uint32) any              { return p.r.probeID(id) }
func (p plumbing) Slot() int                                  { return slotOf(p.r.ownerID()) }
func (p plumbing) WatchAttachment(id uint32, f func()) func() { return p.r.watchAttachment(id, f) }
