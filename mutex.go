package shmlock

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/guard"
	"github.com/shmlock/shmlock/internal/closing"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/futex"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// The owner word is the first word of the lock's line; internal/line lays out
// its bits. What each part means to the lock:
//
//	owner:       who holds it, 0 when free (region.Plumbing.OwnerFor). In
//	             shm.ModeProbe the holder's owner ID, which names a process's
//	             attachment to the region, so it is never reused by a later
//	             process, even one with the same PID. In shm.ModeRobust the
//	             thread ID of the holder's robust list that links this line:
//	             when the holder's process dies, the kernel replaces it by 0
//	             and sets OwnerDied, keeping waiters and the high half, and
//	             wakes one waiter (see internal/robust); the region keeps
//	             thread IDs unique among its attachments.
//	owner died:  set only in a free word, by the end of a hold
//	             that was not a release: Break sets it (with owner 0), and
//	             in robust mode so does the kernel at the holder's death
//	             (FUTEX_OWNER_DIED), or Region.Close. The acquisition that
//	             takes the word clears it and counts the recovery; so does a
//	             recovery CAS from a word whose holder was probed dead. The
//	             taker is told (Guard.Recovered), or, if it cannot be (Lock,
//	             TryLock), leaves the news in the untold bit of the line's
//	             recoveries word for the next Acquire. So a held word never
//	             carries OwnerDied, every death is told once (several
//	             before one Acquire are told together), and every death is
//	             counted once, but for one whose taker dies in the instant
//	             between its CAS and its count: the taker's own death is
//	             then counted and told, and the one before it told with it
//	             (so too a death a waiter gives back at Close, if a Break
//	             lands meanwhile: the two are counted as one).
//	waiters:     a waiter may be asleep on the low half of the word;
//	             whoever releases must wake one. Set by a waiter before it
//	             sleeps, cleared by every release, and set again by a waiter
//	             that acquires after sleeping, since it cannot know whether
//	             others still sleep: that passes the wake-up on. A waiter that
//	             dies leaves at most one spurious wake-up behind.
//	gen:         acquisitions so far, modulo 2^32. Every acquisition,
//	             recovery included, adds one, so a CAS from an owner word seen
//	             earlier fails if anyone acquired since: a recovery can never
//	             rob a later holder, even one with the same owner (ABA). The
//	             holder's gen is its fencing token.
//
// Every step of the protocol is marked by fault.Hit with a named point; the
// SPIN model in testdata/mutex.pml labels its steps with the same names (its acquire,
// probe, recovery CAS and release are Lock, Probe, the CAS in lockSlow and
// Unlock here), so a change to either shows where the other must change.
//
// The low half follows the layout of a Linux robust futex word (TID, then
// OWNER_DIED, then FUTEX_WAITERS), and it is the half that changes at every
// release, so waiters sleep on it with a futex.

// Size is the number of bytes a Mutex occupies in a region: one cache line.
const Size = shm.LineSize

// Mutex is a mutual exclusion lock shared by the processes that map one
// region, which survives the death of its holder: the first waiter to find the
// holder dead takes the lock over and is told so.
//
// The zero bytes of a fresh region are an unlocked Mutex. A Mutex is held by a
// process, not a goroutine: like sync.Mutex, one goroutine may lock it and
// another unlock it, and locking it twice from one process deadlocks that
// process (Acquire with a deadline reports "held by this process").
//
// Lock and Unlock make *Mutex a sync.Locker. Lock never gives up and cannot say
// that it took over a dead holder's lock; Acquire can do both, and is told of
// a death even when a Lock or TryLock took the lock over before it.
type Mutex struct {
	line *[8]uint64
	word *uint64
	low  *uint32 // the low half of word, for the futex
	self uint64  // our owner ID
	// held is the owner word this Mutex installed at its latest
	// acquisition: Unlock's expected value. Only the acquiring goroutine
	// writes it, after its CAS succeeded, and only the holder reads it,
	// so the owner word's atomics order every access. A stale value (after
	// a Break, or a lock taken through another Mutex for the same line)
	// only fails Unlock's CAS and sends it to the slow path.
	held uint64
	r    *shm.Region
	off  int
	life *closing.Closing
	gate chan struct{} // held by the goroutine of this process that waits in the futex (wait.go)
	// lookout is what this process saw of the prober lease (wait.go).
	lookout lookout
}

// New returns the Mutex that lives at offset off of r's data area. off must be
// a multiple of Size and leave Size bytes in the data area. New tags the line
// so that tools such as shmlock inspect find the lock; it
// fails with shm.ErrInvalid on a read-only region (use Inspect there) and on
// a line that holds another kind of lock, or data; with shm.ErrNoSpace if the
// file system has no room for the line; in shm.ModeRobust with shm.ErrLimit
// past the limits of the robust lists; and with shm.ErrClosed after Close.
func New(r *shm.Region, off int) (*Mutex, error) {
	// The tag lets tools find the lock (region.Plumbing.Placements); it also
	// refuses a line that holds another lock, or data.
	if err := region.Of(r).Place(off, region.KindMutex, 0); err != nil {
		return nil, err
	}
	line, err := region.Of(r).Line(off)
	if err != nil {
		return nil, err
	}
	// In ModeRobust this links the line into a robust list, so that the
	// kernel marks the lock if this process dies holding it.
	self, err := region.Of(r).OwnerFor(off)
	if err != nil {
		return nil, err
	}
	// held starts as our bare owner, so that Unlock's expected value always
	// names us: an Unlock of a lock never taken fails its CAS even on a
	// fresh zero word, and panics in the slow path.
	m := &Mutex{self: uint64(self), held: uint64(self), r: r, off: off, life: closing.Of(r), gate: make(chan struct{}, 1)}
	m.point(line)
	closing.Track(m.life, m, (*Mutex).letGo)
	return m, nil
}

// point makes m use the owner word of line.
func (m *Mutex) point(l *[8]uint64) {
	m.line, m.word = l, &l[line.Owner]
	m.low = line.Low(m.word)
}

// letGo points m at a line of its own (closing.Sentinel) when its region is
// closed: a held word, so that every fast path fails and goes to its slow
// path, which checks the region first and reports it closed.
func (m *Mutex) letGo() { m.point(closing.Sentinel()) }

// closedError is the error, or the panic value, of a use of m after its
// region was closed.
func (m *Mutex) closedError(op string) error {
	return &shm.Error{Op: op, Path: m.r.Path(), Kind: shm.ErrClosed, Detail: "lock at offset " + strconv.Itoa(m.off)}
}

// Lock locks m, waiting as long as it takes. If the holder is found dead, Lock
// takes the lock over; having no way to say so, it leaves the news for the
// next Acquire, which is told (Guard.Recovered).
func (m *Mutex) Lock() {
	// Fast path: one CAS from a free word with nobody asleep and no death
	// to count (OwnerDied).
	w := atomic.LoadUint64(m.word)
	if w&line.LowHalf == 0 && atomic.CompareAndSwapUint64(m.word, w, w+line.GenOne|m.self) {
		m.took(w + line.GenOne | m.self)
		fault.Hit(fault.MutexAcquired) // model: acquired
		return
	}
	m.lockWait()
}

// lockWait is Lock's slow path, kept out of line so that Lock inlines.
//
//go:noinline
func (m *Mutex) lockWait() {
	if _, _, err := m.lockSlow(context.Background(), false); err != nil {
		panic(err) // the region was closed
	}
	fault.Hit(fault.MutexAcquired)
}

// lockQuiet is Lock with a context: it is not told of a death, which stays
// news for the next Acquire.
func (m *Mutex) lockQuiet(ctx context.Context) error {
	w := atomic.LoadUint64(m.word)
	if w&line.LowHalf != 0 || !atomic.CompareAndSwapUint64(m.word, w, w+line.GenOne|m.self) {
		if _, _, err := m.lockSlow(ctx, false); err != nil {
			return err
		}
	} else {
		m.took(w + line.GenOne | m.self)
	}
	fault.Hit(fault.MutexAcquired)
	return nil
}

// TryLock locks m if it is free and reports whether it did. It never waits
// and never probes the holder. A lock reserved for its sleepers (wait.go)
// counts as held, so that polling cannot starve them; TryLock wakes one of
// them to take it, or, if none is left, undoes the reservation and takes the
// lock. It cannot say that the
// previous holder died, so it leaves that news for the next Acquire (see
// OwnerDied). It panics if the region was closed.
func (m *Mutex) TryLock() bool {
	for {
		w := atomic.LoadUint64(m.word)
		if w&line.OwnerMask != 0 {
			if m.life.Closed() {
				panic(m.closedError("trylock"))
			}
			return false
		}
		if w&line.LowHalf == reserved {
			if m.unreserve(w) {
				continue
			}
			return false
		}
		if nw := line.Successor(w, m.self, line.Waiters); atomic.CompareAndSwapUint64(m.word, w, nw) {
			m.took(nw)
			m.settle(w&line.OwnerDied != 0, false)
			fault.Hit(fault.MutexAcquired)
			return true
		}
	}
}

// settle deals with the news an acquisition finds, once its CAS has
// succeeded: died says that the word it replaced had OwnerDied, or that it
// recovered a holder probed dead; that death is counted here. A caller that
// can be told (tell) is told of it, and of any news a Lock or TryLock left
// untold; one that cannot leaves the death untold. The acquirer holds the
// lock, so nobody else changes the word meanwhile; Inspect reads it at any
// time, so count and bit change in one atomic step.
//
// A death between the acquisition's CAS and this step loses this step, not
// the lock: that death ends a hold like any other and is counted and told
// in turn, with the news it carried told with it.
func (m *Mutex) settle(died, tell bool) (told bool) {
	p := &m.line[line.Recoveries]
	for {
		old := atomic.LoadUint64(p)
		nw := old
		if died {
			nw = (old&^line.Untold+1)&^line.Untold | old&line.Untold
			if !tell {
				nw |= line.Untold
			}
		}
		if tell {
			nw &^= line.Untold
		}
		if nw == old || atomic.CompareAndSwapUint64(p, old, nw) {
			return tell && (died || old&line.Untold != 0)
		}
	}
}

// TryAcquire takes m, without waiting, if it is free or if its holder is
// found dead by one probe, and returns a guard that is told of a death
// (Recovered) as Acquire's is. It writes nothing when it fails (but to undo
// a reservation whose sleepers are gone, as TryLock does), so a reader that
// must not write shared memory may call it to free a lock whose holder died.
// It panics if the region was closed.
func (m *Mutex) TryAcquire() (guard.Guard, bool) {
	w := atomic.LoadUint64(m.word)
	if w&line.OwnerMask != 0 {
		if m.life.Closed() {
			panic(m.closedError("tryacquire"))
		}
		if h := m.probe(uint32(w & line.OwnerMask)); h.State != shm.Dead {
			return guard.Guard{}, false
		}
		fault.Hit(fault.MutexProbedDead)
		// The same single CAS from the probed word as lockSlow's.
		nw := line.Successor(w, m.self, line.Waiters)
		if !atomic.CompareAndSwapUint64(m.word, w, nw) {
			return guard.Guard{}, false
		}
		m.took(nw)
		fault.Hit(fault.MutexRecovered)
		return guard.New(releaser{m}, m.settle(true, true), nw>>32), true
	}
	if w&line.LowHalf == reserved {
		if !m.unreserve(w) {
			return guard.Guard{}, false // a sleeper was woken to take it
		}
		if w = atomic.LoadUint64(m.word); w&line.LowHalf != 0 {
			return guard.Guard{}, false
		}
	}
	nw := line.Successor(w, m.self, line.Waiters)
	if !atomic.CompareAndSwapUint64(m.word, w, nw) {
		return guard.Guard{}, false
	}
	m.took(nw)
	fault.Hit(fault.MutexAcquired)
	return guard.New(releaser{m}, m.settle(w&line.OwnerDied != 0, true), nw>>32), true
}

// Unlock unlocks m, which this process must hold. Unlock is a CAS rather
// than a blind store so that it can never release a lock that is no longer
// ours (after an administrator's Break, say): that panics with an error
// matching ErrNotHeld instead, and after Close one matching shm.ErrClosed.
func (m *Mutex) Unlock() {
	// The expected value is the word our acquisition installed, with
	// nobody asleep (a held word never has OwnerDied). Any other word
	// (the waiters bit, another owner, another generation) fails the CAS
	// and goes to the slow path. No load first: a load between the acquiring
	// and the releasing locked instruction adds to the pair's cost
	// (BenchmarkFastPath).
	h := m.held &^ line.Waiters
	raceRelease(m)
	if !atomic.CompareAndSwapUint64(m.word, h, h&^line.OwnerMask) {
		m.unlockSlow(m.self, line.OwnerMask)
	}
}

// releaseFast ends the hold whose generation is gen, and only that hold (a
// Guard's release), by one CAS from the word the acquisition installed with
// nobody asleep. A held word changes only in its waiters bit, so releaseSlow
// asks every other bit to be the one the acquisition installed, or the hold
// is not this one (a copy of its Guard released it already, or Break freed
// it). The two are apart so that the CAS inlines into the Guard's call.
func (m *Mutex) releaseFast(gen uint64) bool {
	free := gen << 32
	raceRelease(m)
	return atomic.CompareAndSwapUint64(m.word, free|m.self, free)
}

func (m *Mutex) releaseSlow(gen uint64) { m.unlockSlow(gen<<32|m.self, ^uint64(line.Waiters)) }

// took records w, the owner word an acquisition just installed by its CAS, as
// Unlock's expected value.
func (m *Mutex) took(w uint64) {
	raceAcquire(m)
	m.held = w
}

// unlockSlow releases a word whose bits under mask are want's, and panics
// with NotHeldError if it is not: Unlock asks only that this process hold m
// (mask OwnerMask), a Guard that its own hold be the one it ends.
func (m *Mutex) unlockSlow(want, mask uint64) {
	if m.life.Closed() {
		panic(m.closedError("unlock"))
	}
	if w, ok := m.release(want, mask); !ok {
		panic(&NotHeldError{Lock: m.name(), Owner: w})
	}
}

// releaseHeld ends the hold this Mutex installed last, if it still is (a
// Break may have ended it), even once Close has begun: for a caller that
// Close waits for (closing.Enter), whose words are still mapped.
func (m *Mutex) releaseHeld() { m.release(m.held, ^uint64(line.Waiters)) }

// release is unlockSlow's step once the region is known to be mapped: it
// reports false, with the word found, if the bits under mask are not want's.
func (m *Mutex) release(want, mask uint64) (uint64, bool) {
	for {
		w := atomic.LoadUint64(m.word)
		if w&line.OwnerMask == 0 || w&mask != want&mask {
			return w, false
		}
		free := w &^ line.LowHalf
		if w&line.Waiters != 0 && atomic.LoadUint64(&m.line[line.Wait])&starving != 0 {
			free |= reserved
		}
		if atomic.CompareAndSwapUint64(m.word, w, free) {
			fault.Hit(fault.MutexReleasedBeforeWake)
			if w&line.Waiters != 0 {
				m.wake(free)
			}
			return w, true
		}
	}
}

// Acquire locks m, waiting until ctx is done, and returns a guard that
// releases it. If the previous holder died without releasing, the guard's
// Recovered reports it, and the protected data is the caller's to check. If
// ctx ends first, the error is a *HeldError that names the holder, says
// whether it is alive, and wraps ctx.Err(). If the region is closed, before
// or during the wait, the error matches shm.ErrClosed.
func (m *Mutex) Acquire(ctx context.Context) (guard.Guard, error) {
	w := atomic.LoadUint64(m.word)
	if w&line.LowHalf == 0 && atomic.CompareAndSwapUint64(m.word, w, w+line.GenOne|m.self) {
		m.took(w + line.GenOne | m.self)
		fault.Hit(fault.MutexAcquired)
		// News a Lock left is in the recoveries word, on the line the
		// CAS just brought in.
		told := atomic.LoadUint64(&m.line[line.Recoveries])&line.Untold != 0 && m.settle(false, true)
		return guard.New(releaser{m}, told, (w+line.GenOne)>>32), nil
	}
	recovered, held, err := m.lockSlow(ctx, true)
	if err != nil {
		return guard.Guard{}, err
	}
	fault.Hit(fault.MutexAcquired)
	return guard.New(releaser{m}, recovered, held>>32), nil
}

// releaser adapts a Mutex to guard.Releaser. A plain mutex has no state of
// its own to restore on the abort path: the caller's data is the caller's.
// It is one pointer, so that making it a guard.Releaser allocates nothing.
type releaser struct{ m *Mutex }

func (r releaser) Release(fence uint64, committed bool) {
	fault.Hit(fault.MutexBeforeRelease)
	if !r.m.releaseFast(fence) {
		r.m.releaseSlow(fence)
	}
}

// giveBack undoes an acquisition that installed nw after Close began (Close
// waits for this waiter, so the word is still mapped): the lock goes free as
// if it had not been taken, keeping OwnerDied if it carried the news of a
// death (the next taker counts it and is told), and a sleeper is woken. It
// returns the error of the closed region.
func (m *Mutex) giveBack(low *uint32, nw uint64, died bool) error {
	for {
		// Only waiters setting their bit change the word meanwhile,
		// or an administrator's Break.
		w := atomic.LoadUint64(m.word)
		if w&^line.Waiters != nw&^line.Waiters {
			break
		}
		free := w &^ line.LowHalf
		if died {
			free |= line.OwnerDied
		}
		if atomic.CompareAndSwapUint64(m.word, w, free) {
			if w&line.Waiters != 0 {
				futex.Wake(low, 1)
			}
			break
		}
	}
	return m.closedError("lock")
}

// noteHeld records, for error messages and inspection, that the hold with
// owner word w was seen at now. Only the first sighting of a hold stamps it,
// and every stamp is a time at which that hold already existed, so "held for
// at least now - stamp" is always true.
func (m *Mutex) noteHeld(w uint64, now time.Time) {
	s := atomic.LoadUint64(&m.line[line.Since])
	if s>>32 == w>>32 {
		return
	}
	atomic.CompareAndSwapUint64(&m.line[line.Since], s, w&^line.LowHalf|uint64(uint32(now.UnixMilli())))
}

func sinceOrZero(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return time.Since(t)
}

// heldFor returns how long the hold with owner word w has at least lasted,
// as far as any waiter saw: 0 if none stamped it. Correct for holds shorter
// than 2^32 ms (49 days).
func (m *Mutex) heldFor(w uint64) time.Duration {
	s := atomic.LoadUint64(&m.line[line.Since])
	if s>>32 != w>>32 {
		return 0
	}
	return time.Duration(uint32(time.Now().UnixMilli())-uint32(s)) * time.Millisecond
}

// heldError reports a wait that ended while w was held; seenAt is when this
// waiter first saw that hold (zero if it never looked).
func (m *Mutex) heldError(ctx context.Context, w uint64, start, seenAt time.Time, h shm.Holder) error {
	if h.ID == 0 && w&line.OwnerMask != 0 {
		h = m.probe(uint32(w & line.OwnerMask))
	}
	return &HeldError{
		Lock:    m.name(),
		Path:    m.r.Path(),
		Off:     m.off,
		Owner:   w &^ line.Waiters,
		Holder:  h,
		HeldFor: max(m.heldFor(w), sinceOrZero(seenAt)),
		Waited:  time.Since(start),
		Err:     ctx.Err(),
	}
}

// Break frees m if, and only if, its owner word is exactly owner: the
// administrator's way out when a holder cannot be verified dead (in a PID
// namespace the probe cannot see, say) but is known to be. owner comes from a
// HeldError or a State. It leaves the word free with OwnerDied set, as a
// death does: whoever takes the lock next counts the recovery, and the next
// Acquire is told (Guard.Recovered). Break fails with ErrOwnerChanged if the
// lock changed hands meanwhile.
func (m *Mutex) Break(owner uint64) error {
	if m.life.Closed() {
		return m.closedError("break")
	}
	if owner&line.OwnerMask == 0 {
		return &BreakError{Lock: m.name(), Owner: owner, Now: atomic.LoadUint64(m.word), Err: ErrNotLocked}
	}
	for {
		w := atomic.LoadUint64(m.word)
		// The waiters bit may come and go without changing the hold.
		if w&^line.Waiters != owner&^line.Waiters {
			return &BreakError{Lock: m.name(), Owner: owner, Now: w, Err: ErrOwnerChanged}
		}
		if atomic.CompareAndSwapUint64(m.word, w, w&^line.OwnerMask|line.OwnerDied) {
			if w&line.Waiters != 0 {
				futex.Wake(m.low, 1)
			}
			return nil
		}
	}
}

// State is a Mutex at one moment, as Inspect reads it.
type State struct {
	Owner      uint64 // the raw owner word (the value Break takes)
	Held       bool
	Generation uint32 // acquisitions so far, modulo 2^32
	Waiters    bool   // a waiter may be asleep
	OwnerDied  bool   // a holder died or was broken, and no Acquire has been told yet
	Recoveries uint64 // dead or broken holders whose lock was taken over so far
	Holder     shm.Holder
	HeldFor    time.Duration // at least this long, as waiters saw; 0 if no waiter looked
}

// Inspect reads m's state and, if it is held, probes the holder. It writes
// nothing to the region. It panics if the region was closed.
func (m *Mutex) Inspect() State {
	if m.life != nil && m.life.Closed() {
		panic(m.closedError("inspect"))
	}
	w := atomic.LoadUint64(m.word)
	rec := atomic.LoadUint64(&m.line[line.Recoveries])
	s := State{
		Owner:      w,
		Held:       w&line.OwnerMask != 0,
		Generation: uint32(w >> 32),
		Waiters:    w&line.Waiters != 0,
		OwnerDied:  w&line.OwnerDied != 0 || rec&line.Untold != 0,
		Recoveries: rec &^ line.Untold,
	}
	if s.Held {
		s.Holder = m.probe(uint32(w & line.OwnerMask))
		s.HeldFor = m.heldFor(w)
	}
	return s
}

// Inspect returns the State of the Mutex at offset off of r without writing
// anything, so r may be open read-only (shm.OpenReadOnly): how tools look at
// a lock they do not use. off is the lock's line, as for New; the writers'
// Mutex of a SeqLock or Record is at its own offset.
func Inspect(r *shm.Region, off int) (State, error) {
	l, err := region.Of(r).Line(off)
	if err != nil {
		return State{}, err
	}
	m := &Mutex{line: l, word: &l[line.Owner], r: r, off: off}
	return m.Inspect(), nil
}

func (m *Mutex) name() string { return lockName(m.r.Path(), m.off) }

// probe judges the holder that owner names (region.Plumbing.Probe).
func (m *Mutex) probe(owner uint32) shm.Holder { return region.Of(m.r).Probe(owner).(shm.Holder) }
