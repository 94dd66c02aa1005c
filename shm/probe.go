package shm

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/owner"
)

// State is a probe's verdict on a holder.
type State = owner.State

// The verdicts. Only Dead licenses taking a lock over.
const (
	Alive        = owner.Alive
	Dead         = owner.Dead
	Unverifiable = owner.Unverifiable
)

// Holder is what a probe found out about the attachment an owner ID names.
type Holder struct {
	ID       uint32
	Slot     int
	PID      int32     // in the holder's own PID namespace; 0 if unknown
	Attached time.Time // when it attached; zero if unknown
	State    State
	Reason   string // why State, in words fit for an error message
	// ProcState is the one-letter process state read from /proc (T means
	// stopped), or 0 when it was not read.
	ProcState byte
}

func (h Holder) String() string {
	return fmt.Sprintf("pid %d (%s: %s)", h.PID, h.State, h.Reason)
}

// Probe judges whether the attachment named by id is still alive. It reads
// only: recovering a lock whose holder is Dead is the caller's step, a CAS
// from the exact owner word it probed.
func (r *Region) Probe(id uint32) Holder {
	h := Holder{ID: id, Slot: SlotOf(id)}
	if id>>IDBits != 0 || h.Slot == 0 || h.Slot > r.slots {
		h.State, h.Reason = Dead, fmt.Sprintf("corrupt owner %#x: slot %d is not in 1..%d", id, h.Slot, r.slots)
		return h
	}
	if id == r.id {
		h.PID, h.State, h.Reason = r.self.PID, Alive, "this process"
		return h
	}
	e := r.entry(h.Slot)
	reclaimed := func() bool { return atomic.LoadUint32(e.incarnation) != incarnationOf(id) }
	if reclaimed() {
		h.State, h.Reason = Dead, fmt.Sprintf("slot %d was claimed again since: its holder detached or died", h.Slot)
		return h
	}
	p := owner.Process{
		PID:    atomic.LoadInt32(e.pid),
		Start:  atomic.LoadUint64(e.start),
		NS:     atomic.LoadUint64(e.pidns),
		TimeNS: atomic.LoadUint64(e.timens),
	}
	attached := atomic.LoadInt64(e.attached)
	live := owner.LockUnknown
	switch held, err := queryByte(int(r.f.Fd()), int64(h.Slot*entryBytes)); {
	case err != nil:
	case held:
		live = owner.LockHeld
	case lockIsOFD:
		live = owner.LockFree
		// Classic record locks vanish when their process closes any
		// descriptor of the file: a free one proves nothing.
	}
	// A claimant of the slot changes the incarnation before it rewrites the
	// fields: if it is unchanged now, the fields and the lock state we read
	// belonged to this holder, or (the lock) to a newer claimant, which can
	// only make the verdict Alive and the caller probe again.
	if reclaimed() {
		h.State, h.Reason = Dead, fmt.Sprintf("slot %d was claimed again since: its holder detached or died", h.Slot)
		return h
	}
	v := owner.Judge(r.self, p, live)
	h.PID = p.PID
	if attached != 0 {
		h.Attached = time.Unix(0, attached)
	}
	h.State, h.Reason, h.ProcState = v.State, v.Reason, v.ProcState
	return h
}

// Attachments probes every slot of the process table that was ever claimed
// and returns the holders that are not Dead (attached now, or not verifiably
// gone), in slot order. It reads only, and reads the table with pread, so
// that the holes of a sparse table are not brought into memory (reading a
// tmpfs hole through a mapping allocates a page; on a full /dev/shm it faults).
func (r *Region) Attachments() []Holder {
	table := make([]byte, r.slots*entryBytes)
	if _, err := r.f.ReadAt(table, entryBytes); err != nil {
		return nil
	}
	var hs []Holder
	for s := 1; s <= r.slots; s++ {
		e := table[(s-1)*entryBytes:]
		inc := binary.NativeEndian.Uint32(e[entIncarnation:])
		if inc == 0 && binary.NativeEndian.Uint32(e[entPID:]) == 0 {
			continue // never claimed
		}
		if h := r.Probe(makeID(uint32(s), inc)); h.State != Dead {
			hs = append(hs, h)
		}
	}
	return hs
}
