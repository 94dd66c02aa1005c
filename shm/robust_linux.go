//go:build linux

package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/internal/robust"
)

// Robust mode (ModeRobust): how an attachment lets the kernel tell its death.
//
// An attachment maps its region into one of the process's robust arenas
// (internal/robust), whose lists, on threads of their own, serve every
// region the process maps. It links into one of them, once, the line of
// every lock it makes (OwnerFor, which the lock constructors call): before
// any lock word names this attachment, and until Close. A lock word it holds
// names the thread of the list that links its line. So at the process's
// death, of whatever cause, the kernel walks every lock the process could
// hold and marks those it does hold, and no death can fall between taking a
// lock and linking it, or between unlinking one and releasing it: there are
// no such steps. Lock and Unlock stay one CAS each.
//
// The price of linking locks that are not held: the kernel's one test, "does
// the word name the dying thread", must never be true of a lock that another
// attachment holds. Thread IDs are unique within a PID namespace, not across
// namespaces (two containers number their threads alike). So an attachment
// uses only lists whose thread IDs no other entry of the process table
// records, and records each in its entry before any lock word names it; the
// check and the record happen under the lock on byte 0, so two attachments
// never pick one ID. A thread ID in a lock word therefore names one
// attachment, and the probe, the safety net behind the kernel, finds it by
// that ID (probeTID). A list may link the lines of other regions too: their
// tables record its ID as well, each for the one attachment that uses it.
//
// A list serves the lines of every region the process maps, so a region file
// truncated under its mapping (bad input) stops the kernel's walk at its
// first line, and the lines after it, of other regions too, go unmarked: the
// probe finds those deaths.
//
// A dead attachment's IDs stay recorded until they are retired: a lock word
// the kernel did not mark (the walk stops at a word it cannot read) may still
// name one, and must be marked before the ID can name a live attachment's
// locks. Every Open retires the dead's IDs in the background (retireDead); an
// attach that claims a dead slot retires its IDs first (retireClaimed); Close
// retires its own, having marked its words itself and unlinked its lines. So
// the table records the IDs of live attachments and of the recently dead: new
// containers, which all number their threads from 1, need few tries to find
// a free one.
type robustLists struct {
	mu     sync.Mutex // guards lists, lines and closed
	m      *robust.Mapping
	lists  []*robust.List       // the lists whose IDs this attachment records, in its entry's order
	lines  map[int]*robust.List // by line offset: the list that links it
	closed bool

	byte0        sync.Mutex  // this Region's users of the lock on byte 0 after Open
	stopRetiring atomic.Bool // retireDead in the background stops
	retired      chan struct{}
	// tids are the lists' thread IDs, for probes, which must not wait
	// while mu is held across the wait for the lock on byte 0.
	tids atomic.Pointer[[]uint32]
}

func robustAvailable() bool { return robust.Available() }

// mapRobust maps the region file, size bytes, into a robust arena.
func (r *Region) mapRobust(size int) error {
	m, err := robust.Map(int(r.f.Fd()), size)
	if err != nil {
		return err
	}
	r.robust = &robustLists{m: m, lines: map[int]*robust.List{}}
	r.m, r.unmap = m.Bytes(), m.Unmap
	return nil
}

// startRobust records this attachment's first list, one whose thread ID is not
// in taken (what the table records). The caller, attach, holds the lock on
// byte 0.
func (r *Region) startRobust(taken map[uint32]bool) error {
	_, err := r.addList(taken)
	return err
}

// addList finds a list whose thread ID is not in taken, starting a thread for
// one if need be, records the ID in this attachment's entry, and returns the
// list. The caller holds the lock on byte 0, and r.robust.mu unless it is
// attach.
func (r *Region) addList(taken map[uint32]bool) (*robust.List, error) {
	rl := r.robust
	e := r.entry(slotOf(r.id))
	n := atomic.LoadUint32(e.ntids)
	if n >= maxTIDs {
		return nil, &Error{Op: "lock", Path: r.path, Kind: ErrLimit,
			Detail: fmt.Sprintf("robust mode: this attachment links %d lock lines, the most its %d robust lists hold (another Open of the region, or ModeProbe, has no such limit)", maxTIDs*robust.Limit, maxTIDs)}
	}
	free := func(tid int32) bool { t := uint32(tid); return t != 0 && t <= line.OwnerMask && !taken[t] }
	l, err := rl.m.Find(free, true)
	switch {
	case errors.Is(err, robust.ErrThreads):
		return nil, &Error{Op: "lock", Path: r.path, Kind: ErrLimit,
			Detail: fmt.Sprintf("robust mode: all %d threads this process gives to robust lists are in use (%d lock lines each)", robust.MaxThreads, robust.Limit)}
	case errors.Is(err, robust.ErrNoRoom):
		return nil, &Error{Op: "attach", Path: r.path, Kind: ErrLimit,
			Detail: "robust mode: this process may start too few more threads to look for a thread ID the process table does not record (debug.SetMaxThreads, RLIMIT_NPROC or its pids cgroup)"}
	case errors.Is(err, robust.ErrTaken):
		return nil, &Error{Op: "attach", Path: r.path, Kind: ErrLimit,
			Detail: fmt.Sprintf("robust mode: every thread tried has an ID the process table records (%d IDs recorded)", len(taken))}
	case err != nil:
		return nil, &Error{Op: "attach", Path: r.path, Kind: ErrUnsupported, Err: err}
	}
	tid := uint32(l.TID())
	// The ID first, then the count that makes probes see it.
	atomic.StoreUint32(&e.tids[n], tid)
	atomic.StoreUint32(e.ntids, n+1)
	rl.lists = append(rl.lists, l)
	tids := make([]uint32, len(rl.lists))
	for i, l := range rl.lists {
		tids[i] = uint32(l.TID())
	}
	rl.tids.Store(&tids)
	return l, nil
}

// A dead attachment's record: its slot, the slot's incarnation then, and the
// thread IDs it recorded.
type deadRecord struct {
	slot int
	inc  uint32
	tids [maxTIDs]uint32
}

// deadRecords returns the records of the slots that record thread IDs while
// nobody holds their liveness locks (their claimants died without Close):
// candidates, read with pread, which retireDead trusts only once it holds the
// slot's liveness lock itself.
func (r *Region) deadRecords() []deadRecord {
	table, err := r.readTable()
	if err != nil {
		return nil
	}
	var dead []deadRecord
	for s := 1; s <= r.slots; s++ {
		e := table[(s-1)*entryBytes:]
		d := deadRecord{slot: s, inc: binary.NativeEndian.Uint32(e[entIncarnation:])}
		any := false
		for i := range maxTIDs {
			d.tids[i] = binary.NativeEndian.Uint32(e[entTIDs+4*i:])
			any = any || d.tids[i] != 0
		}
		if !any || s == slotOf(r.id) {
			continue
		}
		if held, err := queryByte(int(r.f.Fd()), int64(s*entryBytes)); err == nil && !held {
			dead = append(dead, d)
		}
	}
	return dead
}

// sweep marks owner-died, as the kernel would have, every placed lock word
// that names one of the thread IDs in dead: words the kernel did not mark at
// their holders' deaths (its walk stops at a word it cannot read). The IDs
// stay recorded meanwhile, so no live attachment can be using one. It stops
// early, returning false, when stop is set.
func (r *Region) sweep(dead map[uint32]bool, stop *atomic.Bool) bool {
	return r.eachPlacement(stop, func(p region.Placement) bool {
		if sweepHook != nil && stop != nil {
			sweepHook()
		}
		w := r.futexWord(p.Off)
		if t := atomic.LoadUint32(w) & line.OwnerMask; dead[t] {
			robust.MarkDead(w, int32(t))
		}
		return true
	})
}

// sweepHook, if set, runs at each lock a background sweep visits: tests stop
// one half way with it.
var sweepHook func()

// retireClaimed retires the thread IDs that slot s, just claimed by attach,
// still records from a claimant that died without Close: attach is about to
// overwrite them. The caller holds the lock on byte 0.
func (r *Region) retireClaimed(s int) {
	e := r.entry(s)
	dead := map[uint32]bool{}
	for i := range maxTIDs {
		if t := atomic.LoadUint32(&e.tids[i]); t != 0 {
			dead[t] = true
		}
	}
	if len(dead) > 0 {
		r.sweep(dead, nil)
		r.clearTIDs(s)
	}
}

// retireDead retires the thread IDs that dead attachments still record (see
// the top of this file), so that they do not pile up, and may come to name a
// live attachment's locks without inheriting a dead one's. Open runs it in the
// background; Close stops it.
//
// The words that name them are swept without the lock on byte 0 (a sweep
// reads every line of the data area, which can take a second for a large
// region), but holding each dead slot's liveness byte with a shared lock,
// from before its record is read again (then it is the dead claimant's) to
// the end: meanwhile no attach can claim the slot (its exclusive lock
// conflicts) and reuse its IDs, so no ID being swept can name a live
// attachment's held lock. Retirements may sweep one slot together; each
// clears the record only if it can make its lock exclusive, so no record is
// cleared while another retirement still sweeps for its IDs. (No lock on
// byte 0 is needed: an attach reading the table meanwhile may or may not see
// the IDs, and either is safe once they are swept.) An attach that finds only
// such shared locks on free slots waits for them (Region.attach).
func (r *Region) retireDead(stop *atomic.Bool) {
	fd := int(r.f.Fd())
	var dead []deadRecord
	defer func() {
		for _, d := range dead {
			unlockByte(fd, int64(d.slot*entryBytes))
		}
	}()
	tids := map[uint32]bool{}
	for _, d := range r.deadRecords() {
		if tryLock(fd, shared, int64(d.slot*entryBytes)) != nil {
			continue // claimed meanwhile
		}
		e := r.entry(d.slot)
		d.inc = atomic.LoadUint32(e.incarnation)
		any := false
		for i := range maxTIDs {
			d.tids[i] = atomic.LoadUint32(&e.tids[i])
			if d.tids[i] != 0 {
				tids[d.tids[i]], any = true, true
			}
		}
		if !any {
			unlockByte(fd, int64(d.slot*entryBytes))
			continue
		}
		dead = append(dead, d)
	}
	if len(dead) == 0 || !r.sweep(tids, stop) || stop.Load() {
		return
	}
	fault.Hit(fault.RegionRetireSwept)
	for _, d := range dead {
		// Exclusive now, or another retirement still sweeps: then
		// that one clears the record. Held exclusively, the slot
		// can be neither claimed nor swept by anyone else, and its
		// IDs, swept, are free to reuse at once.
		if stop.Load() || tryLockByte(fd, int64(d.slot*entryBytes)) != nil {
			continue
		}
		e := r.entry(d.slot)
		same := atomic.LoadUint32(e.incarnation) == d.inc
		for i := range maxTIDs {
			same = same && atomic.LoadUint32(&e.tids[i]) == d.tids[i]
		}
		if same {
			r.clearTIDs(d.slot)
		}
		// Let it go at once: held exclusively it would read as claimed,
		// and an attach waiting for the retirement would give up.
		unlockByte(fd, int64(d.slot*entryBytes))
	}
}

// startRetiring runs retireDead in the background, once Open has released
// the lock on byte 0.
func (r *Region) startRetiring() {
	rl := r.robust
	rl.retired = make(chan struct{})
	go func() {
		defer close(rl.retired)
		r.retireDead(&rl.stopRetiring)
	}()
}

// withByte0 runs f under the lock on byte 0, waiting at most 10 s for it,
// taken by one goroutine of this Region at a time (an OFD lock does not
// exclude holders of the same open file description).
func (r *Region) withByte0(f func() error) error {
	rl := r.robust
	rl.byte0.Lock()
	defer rl.byte0.Unlock()
	fd := int(r.f.Fd())
	if err := lockWait(fd, exclusive, 0, 10*time.Second); err != nil {
		return &Error{Op: "lock", Path: r.path, Kind: ErrBusy, Detail: "the lock on byte 0", Err: err}
	}
	defer unlockByte(fd, 0)
	return f()
}

// clearTIDs drops the thread IDs slot s records: the count first, so that a
// probe never counts an ID being cleared.
func (r *Region) clearTIDs(s int) {
	e := r.entry(s)
	atomic.StoreUint32(e.ntids, 0)
	for i := range maxTIDs {
		atomic.StoreUint32(&e.tids[i], 0)
	}
}

// linkRobust links the line at off into one of this attachment's robust
// lists, once, and returns the thread ID of that list (see ownerFor).
func (r *Region) linkRobust(off int) (uint32, error) {
	rl := r.robust
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.closed {
		return 0, &Error{Op: "lock", Path: r.path, Kind: ErrClosed}
	}
	if l := rl.lines[off]; l != nil {
		return uint32(l.TID()), nil
	}
	entry := rl.m.Entry(len(r.m) - len(r.data) + off)
	for {
		l, err := rl.m.Find(rl.mine, false)
		if err == robust.ErrNoList {
			l, err = r.addListLocked()
		}
		if err != nil {
			return 0, err
		}
		// Another region's lines may have filled it since Find: look
		// again.
		if err := l.Link(entry); err == nil {
			rl.lines[off] = l
			return uint32(l.TID()), nil
		}
	}
}

// mine reports whether tid is the thread of one of the lists this attachment
// records. The caller holds rl.mu.
func (rl *robustLists) mine(tid int32) bool {
	for _, l := range rl.lists {
		if l.TID() == tid {
			return true
		}
	}
	return false
}

// addListLocked is addList under the lock on byte 0.
func (r *Region) addListLocked() (l *robust.List, err error) {
	err = r.withByte0(func() error {
		taken, err := r.recordedTIDs()
		if err == nil {
			l, err = r.addList(taken)
		}
		return err
	})
	return l, err
}

// ownTID reports whether tid is the thread of one of this attachment's lists.
func (r *Region) ownTID(tid uint32) bool {
	if r.robust == nil {
		return false
	}
	if tids := r.robust.tids.Load(); tids != nil {
		for _, t := range *tids {
			if t == tid {
				return true
			}
		}
	}
	return false
}

// futexWord returns the 32-bit futex word of the lock at line off.
func (r *Region) futexWord(off int) *uint32 {
	return line.Low((*uint64)(unsafe.Pointer(&r.data[off])))
}

// closeRobust gives up this attachment's locks as its death would, then
// takes its lines out of the lists and retires its IDs, so that the region
// may be unmapped. The marking comes first, while the lines are linked: a
// death in the middle leaves the rest to the kernel, and the IDs to the next
// attach's retireDead. The lines are unlinked before the IDs are cleared: once
// an ID is free, a lock of another attachment may come to name it, and a
// list that still linked its line would have the kernel mark it at this
// process's death. The lists and their threads live on, for other regions.
func (r *Region) closeRobust() {
	rl := r.robust
	if rl == nil {
		return
	}
	rl.stopRetiring.Store(true)
	if rl.retired != nil {
		<-rl.retired
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.closed {
		return
	}
	rl.closed = true
	r.markOwn(rl)
	fault.Hit(fault.RegionCloseMarked)
	for _, l := range rl.lists {
		rl.m.Unlink(l)
	}
	if r.id != 0 && r.fileSize() >= int64(len(r.m)) {
		surviveFaults(func() { r.clearTIDs(slotOf(r.id)) })
	}
}

// markOwn marks the words of rl's lines that name one of its threads, as the
// kernel would at this process's death. A file truncated under the mapping
// loses pages: lines past its end are skipped (touching them would fault),
// and a truncation racing the marking is survived, not a crash.
func (r *Region) markOwn(rl *robustLists) {
	size := r.fileSize()
	hs := int64(len(r.m) - len(r.data))
	surviveFaults(func() {
		for off, l := range rl.lines {
			if hs+int64(off)+LineSize <= size {
				robust.MarkDead(r.futexWord(off), l.TID())
			}
		}
	})
}

// surviveFaults runs f, which touches the mapping, and returns early, rather
// than crash the process, if a page it touches is gone: the file was
// truncated under the mapping (bad input) while f ran.
func surviveFaults(f func()) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if e := recover(); e != nil {
			if _, ok := e.(runtime.Error); !ok {
				panic(e)
			}
		}
	}()
	f()
}

// fileSize returns the size of the region file, or 0 if it cannot be read.
func (r *Region) fileSize() int64 {
	fi, err := r.f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}
