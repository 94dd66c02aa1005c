package shm

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/owner"
)

// State is a probe's verdict on a holder.
type State uint8

// The verdicts. Only Dead licenses taking a lock over.
const (
	Alive        State = 1 + iota // evidence that it runs (it may be stopped or slow)
	Dead                          // evidence that it is gone: recovery is licensed
	Unverifiable                  // no evidence either way: never recovered automatically
)

// The verdicts are internal/owner's, which judges the process: a verdict
// crosses over as its value.
var _ = [1]struct{}{}[Alive-State(owner.Alive)+Dead-State(owner.Dead)+Unverifiable-State(owner.Unverifiable)]

func (s State) String() string { return owner.State(s).String() }

// Holder is what a probe found out about the attachment an owner ID names.
type Holder struct {
	// ID is the owner value probed: the attachment's owner ID in
	// ModeProbe, a thread ID in ModeRobust.
	ID       uint32
	Slot     int       // the holder's slot of the process table; 0 if none records it
	TID      int32     // ModeRobust: the thread ID the lock word names; 0 otherwise
	PID      int32     // in the holder's own PID namespace; 0 if unknown
	Attached time.Time // when it attached; zero if unknown
	State    State
	Reason   string // why State, in words fit for an error message
	// ProcState is the one-letter process state read from /proc (T means
	// stopped), or 0 when it was not read.
	ProcState byte
	// Self says the holder is this attachment: a lock this process waits
	// for while it holds it.
	Self bool
}

func (h Holder) String() string {
	return fmt.Sprintf("pid %d (%s: %s)", h.PID, h.State, h.Reason)
}

// probe judges whether the holder named by owner, the owner field of a lock
// word (bits 0..29), is still alive: the attachment with that owner ID in
// ModeProbe, the attachment that records that thread ID in ModeRobust. It
// reads only: recovering a lock whose holder is Dead is the caller's step, a
// CAS from the exact owner word it probed. After Close it says Unverifiable.
func (r *Region) probe(owner uint32) Holder {
	if r.life.Closed() {
		// Never Dead: that would license a recovery.
		return Holder{ID: owner, State: Unverifiable, Reason: "the region is closed"}
	}
	if r.mode == ModeRobust {
		return r.probeTID(owner)
	}
	return r.probeID(owner)
}

// probeID judges the attachment with owner ID id.
func (r *Region) probeID(id uint32) Holder {
	h := Holder{ID: id, Slot: slotOf(id)}
	if id>>idBits != 0 || h.Slot == 0 || h.Slot > r.slots {
		h.State, h.Reason = Dead, fmt.Sprintf("corrupt owner %#x: slot %d is not in 1..%d", id, h.Slot, r.slots)
		return h
	}
	if id == r.id {
		h.PID, h.State, h.Reason, h.Self = r.self.PID, Alive, "this process", true
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
	switch typ, err := queryLock(int(r.f.Fd()), int64(h.Slot*entryBytes)); {
	case err != nil:
	case typ == exclusive:
		live = owner.LockHeld
	default:
		// Free, or held shared: only a retirement of a dead
		// claimant's thread IDs takes it so (robust_linux.go), where
		// a claimant holds it exclusively.
		live = owner.LockFree
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
	h.State, h.Reason, h.ProcState = State(v.State), v.Reason, v.ProcState
	return h
}

// probeTID judges the attachment that records thread ID tid (see
// robust_linux.go): the safety net behind the kernel, for a lock word that
// names a thread the kernel did not mark. Every attachment records its
// threads' IDs before any lock word names them, and no ID is recorded in two
// slots, so a word's ID names at most one attachment; one that no slot
// records belonged to an attachment whose slot has been claimed again since,
// which needs its liveness lock to be free: it is gone.
func (r *Region) probeTID(tid uint32) Holder {
	h := Holder{ID: tid, TID: int32(tid)}
	if tid == 0 || tid>>idBits != 0 {
		h.State, h.Reason = Dead, fmt.Sprintf("corrupt owner %#x: not a thread ID", tid)
		return h
	}
	if r.ownTID(tid) {
		h.Slot, h.PID, h.State, h.Reason, h.Self = slotOf(r.id), r.self.PID, Alive, "this process", true
		return h
	}
	for range 100 {
		slot, inc, found, stable := r.findTID(tid)
		if !stable {
			continue // a slot was being claimed: look again
		}
		if !found {
			h.State, h.Reason = Dead, fmt.Sprintf("no attached process records thread %d: its holder detached or died (or the word is corrupt)", tid)
			return h
		}
		p := r.probeID(makeID(uint32(slot), inc))
		p.ID, p.TID = tid, int32(tid)
		return p
	}
	// Slots claimed again and again as we looked: say nothing rather than
	// guess; the caller probes again later.
	h.State, h.Reason = Unverifiable, fmt.Sprintf("thread %d: the process table kept changing while it was read", tid)
	return h
}

// findTID looks for the slot that records tid, and that slot's incarnation
// then. stable is false if the slot was being claimed meanwhile, so that the
// answer may be wrong either way.
//
// The table is read with pread, which is not atomic; but the record of an
// attachment that a lock word names was written before that word (the caller
// read the word first), and does not change while the attachment lives, so
// the read sees it whole. What may change under the read is a slot being
// claimed: its claimant zeroes ntids, then bumps the incarnation, then
// records its own IDs. So a slot found recording tid is checked again through
// the mapping: the incarnation, then the IDs, then the incarnation again.
// If the incarnation held still, the IDs seen belong to the claimant of that
// incarnation.
func (r *Region) findTID(tid uint32) (slot int, inc uint32, found, stable bool) {
	table, err := r.readTable()
	if err != nil {
		return 0, 0, false, false
	}
	for s := 1; s <= r.slots; s++ {
		if !recordsTID(table[(s-1)*entryBytes:], tid) {
			continue
		}
		e := r.entry(s)
		inc := atomic.LoadUint32(e.incarnation)
		n := min(atomic.LoadUint32(e.ntids), maxTIDs)
		has := false
		for i := range n {
			has = has || atomic.LoadUint32(&e.tids[i]) == tid
		}
		if atomic.LoadUint32(e.incarnation) != inc {
			return 0, 0, false, false
		}
		if has {
			return s, inc, true, true
		}
		// It stopped recording tid: its claimant is gone, and no other
		// slot records tid.
		return 0, 0, false, true
	}
	return 0, 0, false, true
}

// recordsAnyTID reports whether the table entry e (as read) holds a thread
// ID, counted or not.
func recordsAnyTID(e []byte) bool {
	for i := range maxTIDs {
		if binary.NativeEndian.Uint32(e[entTIDs+4*i:]) != 0 {
			return true
		}
	}
	return false
}

// recordsTID reports whether the table entry e (as read) counts tid among its
// thread IDs.
func recordsTID(e []byte, tid uint32) bool {
	n := min(binary.NativeEndian.Uint32(e[entNTIDs:]), maxTIDs)
	for i := range n {
		if binary.NativeEndian.Uint32(e[entTIDs+4*int(i):]) == tid {
			return true
		}
	}
	return false
}

// recordedTIDs returns every thread ID the process table holds, in any slot,
// counted or not: an ID that a dead claimant recorded may still be named by a
// lock word the kernel did not mark, and must not come to name a live one. It
// reads the table with pread, so that unclaimed slots stay holes.
func (r *Region) recordedTIDs() (map[uint32]bool, error) {
	table, err := r.readTable()
	if err != nil {
		return nil, err
	}
	taken := map[uint32]bool{}
	for s := 1; s <= r.slots; s++ {
		e := table[(s-1)*entryBytes:]
		for i := range maxTIDs {
			if t := binary.NativeEndian.Uint32(e[entTIDs+4*i:]); t != 0 {
				taken[t] = true
			}
		}
	}
	return taken, nil
}

// readTable reads the process table, entries 1..slots, with pread.
func (r *Region) readTable() ([]byte, error) {
	table := make([]byte, r.slots*entryBytes)
	if _, err := r.f.ReadAt(table, entryBytes); err != nil {
		return nil, err
	}
	return table, nil
}

// Attachments probes every slot of the process table that was ever claimed
// and returns the holders that are not Dead (attached now, or not verifiably
// gone), in slot order. It reads only, and reads the table with pread, so
// that the holes of a sparse table are not brought into memory (reading a
// tmpfs hole through a mapping allocates a page; on a full /dev/shm it faults).
// After Close it returns none.
func (r *Region) Attachments() []Holder {
	if r.life.Closed() {
		return nil
	}
	table, err := r.readTable()
	if err != nil {
		return nil
	}
	var hs []Holder
	for s := 1; s <= r.slots; s++ {
		e := table[(s-1)*entryBytes:]
		inc := binary.NativeEndian.Uint32(e[entIncarnation:])
		if inc == 0 && binary.NativeEndian.Uint32(e[entPID:]) == 0 {
			continue // never claimed
		}
		if h := r.probeID(makeID(uint32(s), inc)); h.State != Dead {
			hs = append(hs, h)
		}
	}
	return hs
}
