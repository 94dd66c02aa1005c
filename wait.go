package shmlock

import (
	"context"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/futex"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// The wait word, word 7 of the lock's line, is shared by the lock's waiters. It
// decides who does the work of waiting, never who holds the lock: mutual
// exclusion and recovery read only the owner word, and every value of this
// word, zero included (a fresh line, or one whose waiters all died), leaves
// the waiters able to go on, at worst on their timers.
//
//	bits  0..31  beat: the prober lease's counter. Each claim, renewal or
//	             release of the prober role adds one, so a waiter that sees
//	             the same lease twice, leasePeriod apart, knows that the
//	             prober stopped and takes the role over.
//	bit  32      probing: a waiter holds the prober role. It alone probes
//	             the holder (and, in shm.ModeProbe, watches its process);
//	             the others sleep until a release wakes them, or for
//	             leasePeriod at most.
//	bits 33..40  ages: bit 32+c says that a waiter of age class c may be
//	             asleep, one that has waited starveAfter·2^(c-1) or longer
//	             (c is 1..8; class 0, a shorter wait, has no bit). While any
//	             is set, the lock is starving: a release with sleepers then
//	             leaves the owner word reserved (owner 0, waiters set,
//	             OwnerDied clear), which the fast path fails on and only a
//	             waiter that has slept takes, and wakes a sleeper of the
//	             oldest class named, so the lock goes to the longest
//	             waiters instead of to whoever barges, however often the
//	             others' timers reorder the futex's queue. A release that
//	             finds a class asleep by nobody clears its bit.
const (
	beatMask   = 1<<32 - 1
	probing    = 1 << 32
	ageClasses = 8
	starving   = (1<<ageClasses - 1) << 33
	leaseBits  = probing | beatMask
)

// ageBit is the wait word's bit of age class c (1..ageClasses).
func ageBit(c int) uint64 { return 1 << (32 + c) }

// A sleeper's futex mask: bit c for its age class c (0..ageClasses), and one
// of the bits above those for the waiter itself, so that its own wake-ups (its
// context's end, its death watch) wake it alone, or a few sharing the bit,
// instead of every sleeper of every process.
const ownBits = 32 - ageClasses - 1

var (
	waiterSeq atomic.Uint32
	pidSeed   = uint32(os.Getpid()) // so that processes start on different bits
)

// ownMask is the bit of a new waiter of this process.
func ownMask() uint32 {
	n := waiterSeq.Add(1) + pidSeed
	return 1 << (ageClasses + 1 + n%ownBits)
}

// ageClass is the class of a waiter that has waited d. A sleeper of class c
// sleeps with futex mask 1<<c, so that a release can wake that class alone.
func ageClass(d time.Duration) int {
	if starveAfter <= 0 {
		return ageClasses
	}
	return min(bits.Len64(uint64(d/starveAfter)), ageClasses)
}

// reserved is the low half of an owner word left for the sleepers.
const reserved = line.Waiters

// Tuning of the slow path.
const (
	// spinLoads bounds the loads a waiter spins before it sleeps, each time
	// it wakes; every spinYield loads it yields. It spins only while nobody
	// sleeps and nobody starves: then the holder is likely running and
	// about to release.
	spinLoads = 120
	spinYield = 30
	// leasePeriod is the longest a waiter other than the prober sleeps:
	// it then takes the role over if the lease has not changed since its
	// last look. The prober renews it every renewEvery.
	leasePeriod = 50 * time.Millisecond
	renewEvery  = leasePeriod / 4
	// lookoutGap: sightings of a lease further apart than this do not
	// add up to its being unchanged (lookout).
	lookoutGap = time.Second
	// reservedWait bounds a sleep on a reserved word, whose sleeper may
	// have died after it was woken.
	reservedWait = time.Millisecond
)

// A schedule is when the prober probes a holder: once the same owner word has
// been held for delay, then every quarter of the time it has been held so far,
// between min and max. Short holds are probed soon, so a death is found fast; a
// holder that works for seconds is probed a few times a second.
type schedule struct{ delay, min, max time.Duration }

// probeSchedule serves shm.ModeProbe, where probing finds every death (a death
// watch makes it prompt). robustSchedule is robust mode's safety net, for the
// deaths the kernel cannot mark: a region unmapped without Close, a word its
// list walk did not reach. Tests replace both.
var (
	probeSchedule  = schedule{200 * time.Microsecond, 250 * time.Microsecond, 16 * time.Millisecond}
	robustSchedule = schedule{2 * time.Millisecond, 2 * time.Millisecond, 12 * time.Millisecond}
)

// waitHook, if set, runs at every round of a waiter's loop, after the check of
// Close: tests stop a waiter there.
var waitHook atomic.Pointer[func()]

var multicore = runtime.NumCPU() > 1

// starveAfter: a waiter that has waited this long makes releases hand the lock
// to the sleepers, oldest first, until none of them has waited this long. It
// bounds how long barging holders keep the lock from the sleepers, at the
// price of a wake-up per release while it lasts (docs/DESIGN.md weighs it).
// Tests lower it.
var starveAfter = 10 * time.Millisecond

// A waiter is one goroutine's wait for a Mutex: its clock, its part in the
// prober role and, while it is the prober, its schedule and death watch.
type waiter struct {
	m     *Mutex
	ctx   context.Context
	start time.Time
	own   uint32 // its own futex mask bit (ownMask)
	slept bool   // it slept on the word at least once, so it may take a reserved word
	spins int    // loads spun since it last woke

	// seen is the hold being waited out (its owner word without the
	// waiters bit), seenAt when this waiter first saw it.
	seen   uint64
	seenAt time.Time

	// lease is the lease bits this waiter last wrote while it is the
	// prober, 0 otherwise; renewed is when it wrote them.
	lease     uint64
	renewed   time.Time
	nextProbe time.Time
	last      shm.Holder
	watch     deathWatch
}

// lockSlow acquires m after the fast path failed: spin a little, then sleep on
// the futex until a release wakes this waiter or, if it is the prober, until it
// probes the holder. tell says whether the caller can be told of a dead (or
// broken) predecessor; if not, the news is left untold (see settle). It
// returns whether it told, and the owner word it installed.
func (m *Mutex) lockSlow(ctx context.Context, tell bool) (recovered bool, held uint64, err error) {
	start := time.Now()
	// Close wakes and waits out the goroutines asleep here, or at the gate,
	// so that none touches the word once its memory is unmapped.
	low := m.low
	if !m.life.Enter(low) {
		return false, 0, m.closedError("lock")
	}
	defer m.life.Leave(low)
	if m.enterGate(ctx) {
		defer func() { <-m.gate }()
	}
	wt := waiter{m: m, ctx: ctx, start: start, own: ownMask()}
	if ctx.Done() != nil {
		// Cancellation wakes this waiter, and any sharing its bit; they
		// re-check. (It may run after lockSlow returned, even after
		// Close: a wake of an address no longer mapped is refused,
		// harmlessly.)
		own := wt.own
		stop := context.AfterFunc(ctx, func() { futex.WakeMask(low, 1<<30, own) })
		defer stop()
	}
	defer wt.leave()
	return wt.wait(tell)
}

// wait is a waiter's loop: take a free word, spin while that can pay, follow
// the hold, probe it if this waiter is the prober, and sleep.
func (wt *waiter) wait(tell bool) (recovered bool, held uint64, err error) {
	m, ctx := wt.m, wt.ctx
	for {
		if m.life.Closed() {
			wt.quit()
			return false, 0, m.closedError("lock")
		}
		if f := waitHook.Load(); f != nil {
			(*f)()
		}
		w := atomic.LoadUint64(m.word)
		if w&line.OwnerMask == 0 {
			if w&line.LowHalf == reserved && !wt.slept {
				wt.sleep(w, time.Now())
				continue
			}
			if nw, ok := wt.take(w); ok {
				return wt.won(nw, w&line.OwnerDied != 0, tell)
			}
			continue
		}
		if wt.spin(w) {
			continue
		}
		now := time.Now()
		wt.see(w, now)
		if ctx.Err() != nil {
			// The last look: a holder found dead is taken over even
			// now, by whichever waiter finds it, prober or not.
			if wt.last = m.probe(uint32(w & line.OwnerMask)); wt.last.State == shm.Dead {
				if nw, ok := wt.take(w); ok {
					fault.Hit(fault.MutexRecoveredAtDeadline)
					return wt.won(nw, true, tell)
				}
				continue
			}
			return false, 0, wt.gaveUp(w)
		}
		if wt.lease != 0 && wt.probe(w, now) {
			// Recovery is this one CAS, from the exact word that was
			// probed to ours. If anything changed since (a release,
			// another recovery, a waiter's bit), the CAS fails and we
			// look again: never a clear-then-retake. A recoverer that
			// dies right after it is a dead holder like any other.
			if nw, ok := wt.take(w); ok {
				fault.Hit(fault.MutexRecovered)
				return wt.won(nw, true, tell)
			}
			continue
		}
		wt.sleep(w, now)
	}
}

// enterGate waits for m's gate. One goroutine of this process at a time waits
// for m in the futex, where it holds a thread while it sleeps; the others wait
// here, without one, so that a process with many goroutines waiting for
// locks does not run out of threads. It reports false, without the gate, if
// ctx ended or the region began closing first: the caller then looks at the
// word once more and returns, without a sleep beyond reservedWait.
func (m *Mutex) enterGate(ctx context.Context) bool {
	select {
	case m.gate <- struct{}{}:
		return true
	default:
	}
	select {
	case m.gate <- struct{}{}:
		return true
	case <-ctx.Done():
	case <-m.life.Done():
	}
	return false
}

// take is the acquiring CAS from w, a free word or one whose holder was
// probed dead. A waiter that slept sets the waiters bit, since it cannot know
// whether others still sleep: that passes the wake-up on.
func (wt *waiter) take(w uint64) (uint64, bool) {
	nw := line.Successor(w, wt.m.self, line.Waiters)
	if wt.slept {
		nw |= line.Waiters
	}
	return nw, atomic.CompareAndSwapUint64(wt.m.word, w, nw)
}

// won completes an acquisition that installed nw; died says that it took over
// from a dead or broken holder.
func (wt *waiter) won(nw uint64, died, tell bool) (bool, uint64, error) {
	m := wt.m
	if m.life.Closed() {
		return false, 0, m.giveBack(m.low, nw, died)
	}
	m.took(nw)
	return m.settle(died, tell), nw, nil
}

// spin reports whether to look at w again at once rather than sleep.
func (wt *waiter) spin(w uint64) bool {
	if wt.spins == 0 && (!multicore || atomic.LoadUint64(&wt.m.line[line.Wait])&starving != 0) {
		wt.spins = spinLoads
	}
	if wt.spins >= spinLoads || w&line.Waiters != 0 {
		return false
	}
	wt.spins++
	if wt.spins%spinYield == 0 {
		runtime.Gosched()
	}
	return true
}

// see follows the hold w: a new holder, or a new hold, restarts the clock by
// which the prober probes it.
func (wt *waiter) see(w uint64, now time.Time) {
	if w&^line.Waiters == wt.seen {
		return
	}
	wt.seen, wt.seenAt = w&^line.Waiters, now
	wt.m.noteHeld(wt.seen, now)
	wt.watch.stop()
	wt.nextProbe = now.Add(wt.schedule().delay)
}

func (wt *waiter) schedule() schedule {
	if wt.m.r.Mode() == shm.ModeRobust {
		return robustSchedule
	}
	return probeSchedule
}

// probe is the prober's step on the hold w, when its schedule or its death
// watch says so. It reports whether the holder was found dead: the caller's
// CAS from w then recovers the lock.
func (wt *waiter) probe(w uint64, now time.Time) bool {
	fired := wt.watch.fired()
	if !fired && now.Before(wt.nextProbe) {
		return false
	}
	s := wt.schedule()
	if fired {
		wt.watch.died, wt.watch.quick = nil, s.delay
	}
	id := uint32(w & line.OwnerMask)
	// Armed before the probe: a death before the watch began is seen by
	// this probe, and one after it fires the watch.
	wt.watch.arm(wt.m, id, wt.own)
	wt.last = wt.m.probe(id)
	if wt.last.State == shm.Dead {
		fault.Hit(fault.MutexProbedDead)
		return true
	}
	wt.nextProbe = now.Add(wt.watch.next(min(max(now.Sub(wt.seenAt)/4, s.min), s.max)))
	return false
}

// sleep sets the waiters bit in w if it is not set, and sleeps on the word
// until woken, or until this waiter's role has it look again. A change of the
// word first (the bit's CAS fails, or the futex finds another value) ends the
// sleep at once, so no release is missed.
func (wt *waiter) sleep(w uint64, now time.Time) {
	m := wt.m
	if w&line.Waiters == 0 {
		if !atomic.CompareAndSwapUint64(m.word, w, w|line.Waiters) {
			return
		}
		w |= line.Waiters
	}
	wt.role(now)
	class := ageClass(now.Sub(wt.start))
	if class > 0 {
		wt.update(func(l uint64) uint64 { return l | ageBit(class) })
	}
	if wt.watch.fired() {
		return
	}
	fault.Hit(fault.MutexWaiterBeforeSleep)
	// A death watch that fires between the check above and the sleep
	// wakes nobody: the prober's timeout, its next probe, bounds that.
	futex.WaitMask(m.low, uint32(w), max(wt.timeout(w, now), time.Microsecond), 1<<class|wt.own)
	wt.slept, wt.spins = true, 0
}

// timeout is how long a sleep on w may last.
func (wt *waiter) timeout(w uint64, now time.Time) time.Duration {
	t := leasePeriod
	if wt.lease != 0 {
		t = min(renewEvery, wt.nextProbe.Sub(now))
	}
	if w&line.OwnerMask == 0 {
		// Reserved: its sleeper may have died after it was woken, or
		// there is none and the releaser died before it undid it.
		t = reservedWait
	}
	if d, ok := wt.ctx.Deadline(); ok {
		t = min(t, time.Until(d))
	}
	return t
}

// role keeps this waiter's part in the prober lease before it sleeps: the
// prober renews the lease, or steps down if another waiter took it; any other
// waiter claims it when nobody holds it, or when it has not changed for
// leasePeriod (its prober died or stopped).
func (wt *waiter) role(now time.Time) {
	p := &wt.m.line[line.Wait]
	for {
		l := atomic.LoadUint64(p)
		switch {
		case wt.lease != 0 && l&leaseBits != wt.lease:
			wt.resign()
			continue
		case wt.lease != 0:
			if now.Sub(wt.renewed) < renewEvery {
				return
			}
		case l&probing == 0:
		case wt.m.lookout.stale(l & leaseBits):
		default:
			return
		}
		lease := probing | (l+1)&beatMask
		if atomic.CompareAndSwapUint64(p, l, l&^leaseBits|lease) {
			if wt.lease == 0 {
				fault.Hit(fault.MutexProberClaimed)
			}
			wt.lease, wt.renewed = lease, now
			return
		}
	}
}

// resign gives up the prober role, which another waiter took over.
func (wt *waiter) resign() {
	wt.lease = 0
	wt.watch.stop()
}

// A lookout is what this process last saw of a lock's prober lease, across
// its waits: a lock taken and released often is waited for in many short
// waits, none of them leasePeriod long, and a lease that none of them sees
// change is still that of a prober that stopped.
type lookout struct {
	mu     sync.Mutex
	looked uint64    // the lease bits last seen
	at     time.Time // when they were first seen
	last   time.Time // when they were last seen
}

// stale records a sighting of the lease bits l, and reports whether they have
// not changed for leasePeriod. A sighting older than lookoutGap vouches for
// nothing since: the beat wraps, so the same bits may be a new lease.
func (o *lookout) stale(l uint64) bool {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if l != o.looked || now.Sub(o.last) > lookoutGap {
		o.looked, o.at = l, now
	}
	o.last = now
	return now.Sub(o.at) >= leasePeriod
}

// gaveUp ends a wait whose context is done while w is held.
func (wt *waiter) gaveUp(w uint64) error {
	m := wt.m
	wt.quit()
	if wt.last.ID != uint32(w&line.OwnerMask) {
		wt.last = m.probe(uint32(w & line.OwnerMask))
	}
	return m.heldError(wt.ctx, w, wt.start, wt.seenAt, wt.last)
}

// quit ends a wait that leaves without the lock: the role first, so that a
// sleeper woken next finds it free; then, unless that woke one, it hands on
// the wake-up a release may have spent on this waiter rather than on one that
// stays: a word left free or reserved wakes another sleeper (or is undone); a
// held word its holder took without the waiters bit, so that its release
// would wake nobody, gets the bit.
func (wt *waiter) quit() {
	if wt.leave() || !wt.slept {
		return
	}
	fault.Hit(fault.MutexWaiterQuit)
	m := wt.m
	w := atomic.LoadUint64(m.word)
	switch {
	case w&line.LowHalf == reserved:
		m.wake(w)
	case w&line.OwnerMask == 0:
		futex.Wake(m.low, 1)
	case w&line.Waiters == 0 && !atomic.CompareAndSwapUint64(m.word, w, w|line.Waiters):
		futex.Wake(m.low, 1)
	}
}

// unreserve serves a reserved word w found by a caller that does not wait
// (TryLock, TryAcquire): it wakes a sleeper to take it, or, if none is left,
// undoes the reservation. It reports whether the word may now be free.
func (m *Mutex) unreserve(w uint64) bool {
	m.wake(w)
	return atomic.LoadUint64(m.word) != w
}

// leave ends this waiter's part in the wait word, however the wait ended,
// and reports whether it woke a sleeper. A prober that leaves while others
// may sleep wakes one, which takes the role when it sleeps again: a death is
// then never left to the others' timers. A second call does nothing.
func (wt *waiter) leave() bool {
	wt.watch.stop()
	if wt.lease == 0 {
		return false
	}
	lease := wt.lease
	wt.lease = 0
	var left bool
	wt.update(func(l uint64) uint64 {
		if left = l&leaseBits == lease; !left {
			return l
		}
		return l&^leaseBits | (l+1)&beatMask
	})
	if left {
		fault.Hit(fault.MutexProberLeft)
	}
	if w := atomic.LoadUint64(wt.m.word); left && w&line.Waiters != 0 {
		wt.m.wake(w) // a reserved word is undone if it wakes nobody
		return true
	}
	return false
}

// update applies f to the wait word atomically, writing only if f changes it.
func (wt *waiter) update(f func(uint64) uint64) {
	p := &wt.m.line[line.Wait]
	for {
		l := atomic.LoadUint64(p)
		if nl := f(l); nl == l || atomic.CompareAndSwapUint64(p, l, nl) {
			return
		}
	}
}

// wake wakes a sleeper after a release that installed free, a free or a
// reserved word: for a reserved word, one of the oldest class asleep. A
// reserved word that woke nobody is undone, and whoever went to sleep on it
// meanwhile is woken.
func (m *Mutex) wake(free uint64) {
	if free&line.LowHalf != reserved {
		futex.Wake(m.low, 1)
		return
	}
	fault.Hit(fault.MutexReservedBeforeWake)
	if m.wakeOldest() || futex.Wake(m.low, 1) > 0 {
		return
	}
	if atomic.CompareAndSwapUint64(m.word, free, free&^line.Waiters) {
		futex.Wake(m.low, 1)
	}
}

// wakeOldest wakes one sleeper of the oldest age class the wait word names,
// and clears the bit of each older class it finds asleep by nobody. A class's
// sleeper that set its bit just before that clear sleeps on unnamed until it
// wakes: any wake may still choose it, and it names its class again before it
// sleeps again, so the clear costs order, never a wake-up.
func (m *Mutex) wakeOldest() bool {
	p := &m.line[line.Wait]
	for c := ageClasses; c > 0; c-- {
		if atomic.LoadUint64(p)&ageBit(c) == 0 {
			continue
		}
		if futex.WakeMask(m.low, 1, 1<<c) > 0 {
			return true
		}
		for l := atomic.LoadUint64(p); l&ageBit(c) != 0; l = atomic.LoadUint64(p) {
			if atomic.CompareAndSwapUint64(p, l, l&^ageBit(c)) {
				break
			}
		}
	}
	return false
}

// deathWatch is the prober's watch on the holder's process (region.Plumbing.Watch):
// armed at the first probe of a hold, it wakes the prober when that process
// exits, so that it probes at once.
type deathWatch struct {
	armed  bool
	died   *atomic.Bool // set by the watch; nil while unarmed or once seen
	stopFn func()
	// quick is the next interval between probes after the watch fired but
	// the probe did not yet find the holder dead (its liveness lock can
	// outlast its exit for a moment): it doubles from the schedule's delay
	// until the schedule's own interval is no longer.
	quick time.Duration
}

func (d *deathWatch) fired() bool { return d.died != nil && d.died.Load() }

func (d *deathWatch) arm(m *Mutex, id uint32, own uint32) {
	if d.armed {
		return
	}
	d.armed = true
	f := new(atomic.Bool)
	d.died = f
	low := m.low
	d.stopFn = region.Of(m.r).Watch(id, func() {
		f.Store(true)
		futex.WakeMask(low, 1<<30, own)
	})
}

// next is the interval to the next probe, the schedule's or a quicker one.
func (d *deathWatch) next(interval time.Duration) time.Duration {
	if d.quick == 0 {
		return interval
	}
	if d.quick >= interval {
		d.quick = 0
		return interval
	}
	q := d.quick
	d.quick *= 2
	return q
}

func (d *deathWatch) stop() {
	if d.stopFn != nil {
		d.stopFn()
	}
	*d = deathWatch{}
}
