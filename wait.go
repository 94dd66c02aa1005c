package shmlock

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/futex"
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
//	bit  33      starving: a waiter has waited starveAfter or longer. A
//	             release with sleepers then leaves the owner word reserved
//	             (owner 0, waiters set, ownerDied clear): the fast path fails
//	             on it and only a waiter that has slept takes it, so the lock
//	             goes to the sleepers in turn instead of to whoever barges.
const (
	beatMask  = 1<<32 - 1
	probing   = 1 << 32
	starving  = 1 << 33
	leaseBits = probing | beatMask
)

// reserved is the low half of an owner word left for the sleepers.
const reserved = waiters

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
	// reservedWait bounds the prober's sleep on a reserved word, whose
	// sleeper may have died after it was woken.
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
// to the sleepers (starving); an acquisition after a shorter wait ends that.
// It bounds how long barging holders keep the lock from the sleepers, at the
// price of a wake-up per release while it lasts (docs/DESIGN.md weighs it).
// Tests lower it.
var starveAfter = 10 * time.Millisecond

// A waiter is one goroutine's wait for a Mutex: its clock, its part in the
// prober role and, while it is the prober, its schedule and death watch.
type waiter struct {
	m     *Mutex
	ctx   context.Context
	start time.Time
	slept bool // it slept on the word at least once, so it may take a reserved word
	spins int  // loads spun since it last woke

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

	// looked is the lease as this waiter last saw it while not the prober,
	// lookedAt when it first saw it so.
	looked   uint64
	lookedAt time.Time
}

// lockSlow acquires m after the fast path failed: spin a little, then sleep on
// the futex until a release wakes this waiter or, if it is the prober, until it
// probes the holder. tell says whether the caller can be told of a dead (or
// broken) predecessor; if not, the news is left untold (see settle). It
// returns whether it told, and the owner word it installed.
func (m *Mutex) lockSlow(ctx context.Context, tell bool) (recovered bool, held uint64, err error) {
	// Close wakes and waits out the goroutines asleep here, so that none
	// touches the word once its memory is unmapped.
	low := m.low
	if !m.life.Enter(low) {
		return false, 0, m.closedError("lock")
	}
	defer m.life.Leave(low)
	if ctx.Done() != nil {
		// Cancellation wakes every sleeper on the word; they re-check.
		// (It may run after lockSlow returned, even after Close: a wake
		// of an address no longer mapped is refused, harmlessly.)
		stop := context.AfterFunc(ctx, func() { futex.Wake(low, 1<<30) })
		defer stop()
	}
	wt := waiter{m: m, ctx: ctx, start: time.Now()}
	defer wt.leave()
	for {
		if m.life.Closed() {
			return false, 0, m.closedError("lock")
		}
		if f := waitHook.Load(); f != nil {
			(*f)()
		}
		w := atomic.LoadUint64(m.word)
		if w&ownerMask == 0 {
			if w&lowHalf == reserved && !wt.slept {
				wt.sleep(w, time.Now())
				continue
			}
			if nw, ok := wt.take(w); ok {
				return wt.won(nw, w&ownerDied != 0, tell)
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
			if wt.last = m.r.Probe(uint32(w & ownerMask)); wt.last.State == shm.Dead {
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

// take is the acquiring CAS from w, a free word or one whose holder was
// probed dead. A waiter that slept sets the waiters bit, since it cannot know
// whether others still sleep: that passes the wake-up on.
func (wt *waiter) take(w uint64) (uint64, bool) {
	nw := successor(w, wt.m.self, waiters)
	if wt.slept {
		nw |= waiters
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
	if time.Since(wt.start) < starveAfter {
		wt.update(func(l uint64) uint64 { return l &^ starving })
	}
	return m.settle(died, tell), nw, nil
}

// spin reports whether to look at w again at once rather than sleep.
func (wt *waiter) spin(w uint64) bool {
	if wt.spins == 0 && (!multicore || atomic.LoadUint64(&wt.m.line[wordWait])&starving != 0) {
		wt.spins = spinLoads
	}
	if wt.spins >= spinLoads || w&waiters != 0 {
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
	if w&^waiters == wt.seen {
		return
	}
	wt.seen, wt.seenAt = w&^waiters, now
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
	id := uint32(w & ownerMask)
	// Armed before the probe: a death before the watch began is seen by
	// this probe, and one after it fires the watch.
	wt.watch.arm(wt.m, id)
	wt.last = wt.m.r.Probe(id)
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
	if w&waiters == 0 {
		if !atomic.CompareAndSwapUint64(m.word, w, w|waiters) {
			return
		}
		w |= waiters
	}
	wt.role(now)
	if now.Sub(wt.start) >= starveAfter {
		wt.update(func(l uint64) uint64 { return l | starving })
	}
	if wt.watch.fired() {
		return
	}
	fault.Hit(fault.MutexWaiterBeforeSleep)
	// A death watch that fires between the check above and the sleep
	// wakes nobody: the prober's timeout, its next probe, bounds that.
	futex.Wait(m.low, uint32(w), max(wt.timeout(w, now), time.Microsecond))
	wt.slept, wt.spins = true, 0
}

// timeout is how long a sleep on w may last.
func (wt *waiter) timeout(w uint64, now time.Time) time.Duration {
	t := leasePeriod
	if wt.lease != 0 {
		t = renewEvery
		if w&ownerMask == 0 {
			t = min(t, reservedWait)
		} else {
			t = min(t, wt.nextProbe.Sub(now))
		}
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
	p := &wt.m.line[wordWait]
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
		case l&leaseBits == wt.looked && now.Sub(wt.lookedAt) >= leasePeriod:
		default:
			if l&leaseBits != wt.looked {
				wt.looked, wt.lookedAt = l&leaseBits, now
			}
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
	wt.looked, wt.lookedAt = 0, time.Time{}
}

// gaveUp ends a wait whose context is done while w is held.
func (wt *waiter) gaveUp(w uint64) error {
	m := wt.m
	if wt.slept {
		// A release may have woken us rather than a waiter that stays:
		// pass the wake-up on.
		futex.Wake(m.low, 1)
	}
	if wt.last.ID != uint32(w&ownerMask) {
		wt.last = m.r.Probe(uint32(w & ownerMask))
	}
	return m.heldError(wt.ctx, w, wt.start, wt.seenAt, wt.last)
}

// leave ends this waiter's part in the wait word, however the wait ended. A
// prober that leaves while others may sleep wakes one, which takes the role
// when it sleeps again: a death is then never left to the others' timers.
func (wt *waiter) leave() {
	wt.watch.stop()
	if wt.lease == 0 {
		return
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
	if left && atomic.LoadUint64(wt.m.word)&waiters != 0 {
		wt.m.wake(0)
	}
}

// update applies f to the wait word atomically, writing only if f changes it.
func (wt *waiter) update(f func(uint64) uint64) {
	p := &wt.m.line[wordWait]
	for {
		l := atomic.LoadUint64(p)
		if nl := f(l); nl == l || atomic.CompareAndSwapUint64(p, l, nl) {
			return
		}
	}
}

// wake wakes a sleeper after a release that installed free, a free or a
// reserved word. A reserved word that woke nobody is undone, and whoever went
// to sleep on it meanwhile is woken.
func (m *Mutex) wake(free uint64) {
	if free&lowHalf != reserved {
		futex.Wake(m.low, 1)
		return
	}
	fault.Hit(fault.MutexReservedBeforeWake)
	if futex.Wake(m.low, 1) > 0 {
		return
	}
	if atomic.CompareAndSwapUint64(m.word, free, free&^waiters) {
		futex.Wake(m.low, 1)
	}
}

// deathWatch is the prober's watch on the holder's process (shm.Region.Watch):
// armed at the first probe of a hold, it wakes the sleepers when that process
// exits, so that the prober probes at once.
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

func (d *deathWatch) arm(m *Mutex, id uint32) {
	if d.armed {
		return
	}
	d.armed = true
	f := new(atomic.Bool)
	d.died = f
	low := m.low
	d.stopFn = m.r.Watch(id, func() {
		f.Store(true)
		futex.Wake(low, 1<<30)
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
