package shmlock

import (
	"context"
	"errors"
	"math/bits"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmlock/shmlock/guard"
	"github.com/shmlock/shmlock/internal/closing"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/futex"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// An RWMutex is a writers' Mutex on its first line, then claim lines, then
// one reader line per slot of the region's process table. Readers are not
// counted anonymously: each attachment counts its own shares on its own
// line, under its owner ID, so a writer that finds shares left by an
// attachment that is gone (probed Dead, as a Mutex holder is) frees them,
// and readers on different cores write different lines.
//
// The reader word, word 0 of slot s's reader line:
//
//	bits  0..31  shares: the read holds that slot's attachment has now
//	             (its goroutines together)
//	bits 32..61  the owner ID of the attachment that claimed the line; 0 if
//	             none ever did
//
// Only the attachment named there changes the shares, with 32-bit adds. The
// whole word changes only by CAS: when an attachment claims the line (its
// slot is its own, so whoever the line named before is gone), and when a
// writer, a claimer or an administrator frees the shares of an attachment
// that is gone.
//
// The claim lines hold a bit per slot, set when the slot's attachment
// claims its reader line and never cleared, so that a writer reads only the
// lines of attachments that ever read.
//
// Words 4 and 5 of the first line are the RWMutex's own:
//
//	word 4  readers freed: attachments gone whose shares were freed
//	word 5  drain events, in its low half, where a draining writer sleeps
//	        (an eventcount): bits 0..9 the slot whose line it drains (0:
//	        none), bits 10..31 a count of events. The writer sets the slot,
//	        reads the word, looks at the line, and sleeps only if the word
//	        is unchanged. A last drop by that slot's reader while the
//	        writers' word is held, a claim that frees the slot's stale
//	        shares, the death watch on its reader, the writer's context's
//	        end and BreakReader add one and wake it; readers of other slots
//	        leave the word alone
//
// A reader adds its share and then loads the writers' word; a writer takes
// the writers' word and then loads the shares. Both orders are sequentially
// consistent atomics, so of a reader and a writer racing at least one sees
// the other: the reader backs off, or the writer waits for its share.
const (
	readerShares = 1<<32 - 1
	readerID     = 32
	rwFreed      = line.Object     // word 4 of the first line
	rwEvent      = line.Object + 1 // word 5
	claimBits    = 8 * line.Words * 8
	evSlot       = 1<<10 - 1 // the drain events' slot field (shm.MaxSlots fits)
	evOne        = 1 << 10   // one event
)

// RWMutexSize returns the bytes an RWMutex occupies in a region whose process
// table has slots slots (shm.Options.Slots; 0 means shm.DefaultSlots): its
// line, the claim lines, and a reader line per slot.
func RWMutexSize(slots int) int {
	if slots == 0 {
		slots = shm.DefaultSlots
	}
	return shm.LineSize * (1 + claimLines(slots) + slots)
}

func claimLines(slots int) int { return (slots + claimBits) / claimBits }

// RWMutex is a reader/writer lock shared by the processes that map one
// region, which survives the death of any of its holders: a dead writer's
// lock is taken over as a Mutex's is, and a dead reader's shares are freed
// by the writer that waits for them, on the same evidence of death.
//
// Any number of goroutines of any number of processes may hold it for
// reading, or one for writing. Shares are counted per process, not per
// goroutine (as a Mutex is held by a process): one goroutine may RLock and
// another RUnlock. A writer takes the writers' lock first, which new readers
// wait behind, and then waits for the shares already held to be dropped, so
// a stream of readers does not starve writers. A reader that finds a writer
// queues for the writers' lock as writers do, oldest first, and takes its
// share under it, so a stream of writers does not starve readers either.
// A goroutine that holds a share and asks for the write lock deadlocks, as
// with sync.RWMutex (Acquire with a deadline reports "this process").
//
// The zero bytes of a fresh region are an unlocked RWMutex. It occupies
// RWMutexSize(slots) bytes.
type RWMutex struct {
	w       *Mutex
	claims  []uint64 // bit s: slot s claimed its reader line
	readers []uint64 // reader line of slot s at 8*(s-1)
	mine    *uint32  // the shares of this attachment
	id      uint32
	slot    int // this attachment's
	slots   int
	life    *closing.Closing
	// ev is the drain events' word; evKey is its address in the mapping,
	// which never changes, for the closing wait (ev moves at Close).
	ev, evKey *uint32
	// closed and closedEv are where mine and ev point once the region is
	// closed, so that a reader touches no unmapped memory and the writers'
	// sentinel word sends it to the slow path, which reports the close.
	closed, closedEv uint32
}

// NewRWMutex returns the RWMutex at offset off of r's data area, which must
// leave RWMutexSize(slots) bytes for the region's slots. It tags the line and
// claims this attachment's reader line; its errors are those of New.
func NewRWMutex(r *shm.Region, off int) (*RWMutex, error) {
	p := region.Of(r)
	slots := p.Slots()
	size := RWMutexSize(slots) - shm.LineSize
	if err := p.Place(off, region.KindRWMutex, size); err != nil {
		return nil, err
	}
	w, err := New(r, off)
	if err != nil {
		return nil, err
	}
	b, err := p.Span(off+shm.LineSize, size)
	if err != nil {
		return nil, err
	}
	rw := &RWMutex{w: w, id: p.ID(), slot: p.Slot(), life: w.life}
	rw.ev = line.Low(&w.line[rwEvent])
	rw.evKey = rw.ev
	rw.point(b, slots)
	rw.claim(rw.slot)
	closing.Track(rw.life, rw, (*RWMutex).letGo)
	return rw, nil
}

// claim makes slot's reader line this attachment's. Whoever it named before
// held the slot before this attachment did, so is gone: its shares are
// freed.
func (rw *RWMutex) claim(slot int) {
	p := rw.reader(slot)
	for {
		v := atomic.LoadUint64(p)
		if uint32(v>>readerID) == rw.id {
			break // another RWMutex of this attachment for the same lock
		}
		if atomic.CompareAndSwapUint64(p, v, uint64(rw.id)<<readerID) {
			if v&readerShares != 0 {
				atomic.AddUint64(&rw.w.line[rwFreed], 1)
				rw.signal(slot)
			}
			break
		}
	}
	rw.mine = line.Low(p)
	// Set after the line names us, before our first share: a writer that
	// misses the bit took the writers' word before our first share's add,
	// and that share then sees it.
	atomic.OrUint64(&rw.claims[slot/64], 1<<(slot%64))
}

// point makes rw use the claim and reader lines in b, for slots slots.
func (rw *RWMutex) point(b []byte, slots int) {
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8)
	n := claimLines(slots) * line.Words
	rw.claims, rw.readers, rw.slots = words[:n:n], words[n:], slots
}

func (rw *RWMutex) reader(slot int) *uint64 { return &rw.readers[(slot-1)*line.Words] }

// claimed calls f for each slot whose claim bit is set, in slot order, until
// f returns false. A bit past the table (a corrupt line) names no slot.
func (rw *RWMutex) claimed(f func(slot int) bool) {
	for i := range rw.claims {
		for c := atomic.LoadUint64(&rw.claims[i]); c != 0; c &= c - 1 {
			if s := 64*i + bits.TrailingZeros64(c); s >= 1 && s <= rw.slots && !f(s) {
				return
			}
		}
	}
}

// letGo points rw at memory of its own when its region is closed. Shares
// this attachment still holds end with it: they are dropped (and a writer
// draining them woken), while the line is still mapped.
func (rw *RWMutex) letGo() {
	p := rw.reader(rw.slot)
	for v := atomic.LoadUint64(p); v>>readerID == uint64(rw.id) && v&readerShares != 0; v = atomic.LoadUint64(p) {
		if atomic.CompareAndSwapUint64(p, v, v&^readerShares) {
			rw.signal(rw.slot)
			break
		}
	}
	rw.mine, rw.ev = &rw.closed, &rw.closedEv
	rw.claims, rw.readers, rw.slots = nil, nil, 0
}

// maxShares bounds the shares one attachment holds at once: a count that
// reached 2^32 would wrap to none, and a writer would enter beside them.
const maxShares = 1<<31 - 1

// add adds a share of this attachment. Past maxShares it takes it back and
// panics, with shm.ErrLimit, long before the count could wrap.
func (rw *RWMutex) add() {
	if atomic.AddUint32(rw.mine, 1) > maxShares {
		rw.tooMany()
	}
}

//go:noinline
func (rw *RWMutex) tooMany() {
	rw.drop()
	panic(&shm.Error{Op: "rlock", Path: rw.w.r.Path(), Kind: shm.ErrLimit,
		Detail: "this process holds 2^31-1 read shares of the RWMutex at offset " + strconv.Itoa(rw.w.off)})
}

// RLock locks rw for reading, waiting as long as it takes.
func (rw *RWMutex) RLock() {
	rw.add()
	fault.Hit(fault.RWReaderAdded)
	if atomic.LoadUint64(rw.w.word)&line.OwnerMask != 0 {
		rw.rlockWait()
	}
}

//go:noinline
func (rw *RWMutex) rlockWait() {
	if _, _, err := rw.rlockSlow(context.Background()); err != nil {
		panic(err)
	}
}

// TryRLock locks rw for reading if no writer holds it or waits for it, and
// reports whether it did. It never waits.
func (rw *RWMutex) TryRLock() bool {
	rw.add()
	if atomic.LoadUint64(rw.w.word)&line.OwnerMask == 0 {
		return true
	}
	rw.drop()
	if rw.life.Closed() {
		panic(rw.w.closedError("tryrlock"))
	}
	return false
}

// RAcquire locks rw for reading, waiting until ctx is done, and returns a
// guard whose Release drops the share. The guard is Recovered when a holder
// of the writers' lock died (or was broken) and no writer has been told
// since: the data may be half written and not yet repaired. That holder may
// have been a reader that died while it queued through the writers' lock,
// which wrote nothing: the news is then a false alarm, told until a writer
// takes it. A reader is not told of other readers' deaths (a reader writes
// nothing). Its Fence is the writers'
// generation it read under. A copy of a reader's guard is a second handle on
// the same share: releasing both drops two shares of this process.
func (rw *RWMutex) RAcquire(ctx context.Context) (guard.Guard, error) {
	rw.add()
	fault.Hit(fault.RWReaderAdded)
	if told, w := rw.look(); w&line.OwnerMask == 0 {
		return guard.New(readReleaser{rw}, told, w>>32), nil
	}
	told, gen, err := rw.rlockSlow(ctx)
	if err != nil {
		return guard.Guard{}, err
	}
	return guard.New(readReleaser{rw}, told, gen), nil
}

// look is a reader's look, after its add, at the writers' word w, and whether
// it is told. A writer takes the news only once drained, holding the
// writers' word, and repairs before it releases it: a writer that took the
// word after this reader's add waits for its share before it can take the
// news, and one that took it before has released it if w is free. The news
// is loaded first all the same, so that a reader that finds the word free
// saw the news or a writer that had repaired, whichever way writers take it.
func (rw *RWMutex) look() (told bool, w uint64) {
	news := atomic.LoadUint64(&rw.w.line[line.Recoveries]) & line.Untold
	w = atomic.LoadUint64(rw.w.word)
	return news != 0 || w&line.OwnerDied != 0, w
}

// rlockSlow takes a share for a reader that found the writers' word held: it
// drops the share it added, and spins while the word stays held, as a Mutex
// waiter does, adding its share again when it is free. Past that, it queues
// for the writers' lock as a writer does (without being told, so a writer's
// death stays news for the next writer), and adds its share under it, when
// no writer can be draining. Queueing at once would make every reader that
// meets a write hold the writers' lock in turn, and the readers that come
// after meet those holds: a convoy of readers that excludes each other.
func (rw *RWMutex) rlockSlow(ctx context.Context) (told bool, gen uint64, err error) {
	rw.drop()
	fault.Hit(fault.RWReaderDropped)
	if rw.life.Closed() {
		return false, 0, rw.w.closedError("rlock")
	}
	var spun time.Time
	for i := 1; multicore; i++ {
		if i%spinYield == 0 {
			if now := time.Now(); spun.IsZero() {
				spun = now
			} else if now.Sub(spun) > shareSpin {
				break
			}
			runtime.Gosched()
		}
		w := atomic.LoadUint64(rw.w.word)
		if w&line.OwnerMask == 0 {
			rw.add()
			fault.Hit(fault.RWReaderAdded)
			if told, w := rw.look(); w&line.OwnerMask == 0 {
				return told, w >> 32, nil
			}
			rw.drop()
		} else if w&line.Waiters != 0 {
			break // others sleep on the writers' lock: queue behind them
		}
	}
	if err := rw.w.lockQuiet(ctx); err != nil {
		return false, 0, err
	}
	rw.add()
	fault.Hit(fault.RWReaderShared)
	told = atomic.LoadUint64(&rw.w.line[line.Recoveries])&line.Untold != 0
	gen = rw.w.held >> 32
	rw.w.Unlock()
	return told, gen, nil
}

// drop takes back one share, and wakes a writer that may wait for the last
// one.
func (rw *RWMutex) drop() {
	if atomic.AddUint32(rw.mine, ^uint32(0)) == 0 {
		rw.signal(rw.slot)
	}
}

// signal adds a drain event and wakes the draining writer, if it drains
// slot's line; slot 0 is whichever line it drains.
func (rw *RWMutex) signal(slot int) {
	for {
		old := atomic.LoadUint32(rw.ev)
		if slot != 0 && old&evSlot != uint32(slot) {
			return // nobody drains that line; one that comes reads it after
		}
		if atomic.CompareAndSwapUint32(rw.ev, old, old+evOne) {
			break
		}
	}
	futex.Wake(rw.ev, 1<<30)
}

// signalOpen is signal(0) for a goroutine that Close does not wait for (a
// death watch's, a context's): it touches the line only inside the closing
// wait, so Close waits for it, and never after.
func (rw *RWMutex) signalOpen() {
	if rw.life.Enter(rw.evKey) {
		rw.signal(0)
		rw.life.Leave(rw.evKey)
	}
}

// draining names slot as the line the writer drains, in the drain events'
// word (0: none).
func (rw *RWMutex) draining(slot int) {
	for {
		old := atomic.LoadUint32(rw.ev)
		if atomic.CompareAndSwapUint32(rw.ev, old, old&^evSlot|uint32(slot)) {
			return
		}
	}
}

// RUnlock drops a share that this process holds. It panics with
// NotHeldError if it holds none.
func (rw *RWMutex) RUnlock() {
	fault.Hit(fault.RWReaderBeforeRelease)
	// A CAS, not an add: an RUnlock without a share must not take the
	// count through -1, where another goroutine's RLock would hold a share
	// counted as none.
	n := atomic.LoadUint32(rw.mine)
	if n == 0 || !atomic.CompareAndSwapUint32(rw.mine, n, n-1) {
		n = rw.runlockSlow()
	} else {
		n--
	}
	// Shares dropped while no writer waits wake nobody; the writer that
	// comes later reads the shares after taking the writers' word.
	if n == 0 && atomic.LoadUint64(rw.w.word)&line.OwnerMask != 0 {
		rw.wakeWriter()
	}
}

// runlockSlow is RUnlock's drop when the count was 0 (no share, or a closed
// region) or changed under its CAS; it returns the count left.
//
//go:noinline
func (rw *RWMutex) runlockSlow() uint32 {
	for {
		if rw.life.Closed() {
			panic(rw.w.closedError("runlock"))
		}
		n := atomic.LoadUint32(rw.mine)
		if n == 0 {
			panic(&NotHeldError{Lock: rw.w.name(), Owner: uint64(rw.id) << readerID})
		}
		if atomic.CompareAndSwapUint32(rw.mine, n, n-1) {
			return n - 1
		}
	}
}

//go:noinline
func (rw *RWMutex) wakeWriter() {
	if rw.life.Closed() {
		panic(rw.w.closedError("runlock"))
	}
	rw.signal(rw.slot)
}

type readReleaser struct{ rw *RWMutex }

func (r readReleaser) Release(fence uint64, committed bool) { r.rw.RUnlock() }

// RLocker returns a sync.Locker whose Lock and Unlock are rw's RLock and
// RUnlock.
func (rw *RWMutex) RLocker() sync.Locker { return (*rlocker)(rw) }

type rlocker RWMutex

func (r *rlocker) Lock()   { (*RWMutex)(r).RLock() }
func (r *rlocker) Unlock() { (*RWMutex)(r).RUnlock() }

// Lock locks rw for writing, waiting as long as it takes: for the writers'
// lock (taking over a dead writer's, as Mutex.Lock does, and leaving the news
// for the next Acquire), then for the readers' shares to be dropped, freeing
// those of readers found dead.
func (rw *RWMutex) Lock() {
	rw.w.Lock()
	if err := rw.drain(context.Background(), true); err != nil {
		panic(err) // the region was closed
	}
}

// Unlock unlocks rw for writing. It panics with NotHeldError if this process
// does not hold it.
func (rw *RWMutex) Unlock() { rw.w.Unlock() }

// TryLock locks rw for writing if nobody holds it, and reports whether it
// did. It never waits, but frees the shares of readers it finds dead.
func (rw *RWMutex) TryLock() bool {
	if !rw.w.TryLock() {
		return false
	}
	if err := rw.drain(context.Background(), false); err != nil {
		if errors.Is(err, shm.ErrClosed) {
			panic(err)
		}
		return false
	}
	return true
}

// Acquire locks rw for writing, waiting until ctx is done, and returns a guard
// whose Release unlocks it. The guard is Recovered when a writer died (or was
// broken) holding the writers' lock since the last told writer: the data may
// be half written, and this writer is the one to repair it. A reader that
// died while it queued for the writers' lock counts as such a death. Readers'
// deaths are not told (a reader writes nothing): their shares are freed, and
// counted in RWState.ReadersFreed. If ctx ends while live readers hold
// shares, the error is a HeldError naming one of them (Reader set).
func (rw *RWMutex) Acquire(ctx context.Context) (guard.Guard, error) {
	// The writers' lock is taken without being told, and the news taken
	// only once the readers are drained: until then readers still find it,
	// as nobody has repaired, and a drain that fails has nothing to put
	// back.
	if err := rw.w.lockQuiet(ctx); err != nil {
		return guard.Guard{}, err
	}
	if err := rw.drain(ctx, true); err != nil {
		return guard.Guard{}, err
	}
	told := atomic.LoadUint64(&rw.w.line[line.Recoveries])&line.Untold != 0 && rw.w.settle(false, true)
	return guard.New(releaser{rw.w}, told, rw.w.held>>32), nil
}

// drain waits, holding the writers' lock, until no attachment holds a share,
// freeing the shares of those that are gone; without wait it fails at the
// first live share. When it fails it lets the writers' lock go. Once a line
// holds shares it is inside the wait Close waits out, so that Close neither
// unmaps the lines under it nor comes between its failure and that release;
// if the region was closed before, it leaves the hold to the others, as any
// holder's that closes.
func (rw *RWMutex) drain(ctx context.Context, wait bool) (err error) {
	fault.Hit(fault.RWWriterDraining)
	entered := false
	defer func() {
		if entered {
			rw.draining(0)
			if err != nil {
				rw.w.releaseHeld()
			}
			rw.life.Leave(rw.evKey)
		}
	}()
	for i := range rw.claims {
		for c := atomic.LoadUint64(&rw.claims[i]); c != 0; c &= c - 1 {
			s := 64*i + bits.TrailingZeros64(c)
			if s < 1 || s > rw.slots || atomic.LoadUint64(rw.reader(s))&readerShares == 0 {
				continue // a bit past the table (a corrupt line) names no slot
			}
			if !entered {
				if !rw.life.Enter(rw.evKey) {
					return rw.w.closedError("lock")
				}
				entered = true
			}
			if err := rw.drainSlot(ctx, s, wait); err != nil {
				return err
			}
		}
	}
	return nil
}

// drainSlot waits until slot's reader line holds no share.
func (rw *RWMutex) drainSlot(ctx context.Context, slot int, wait bool) error {
	p := rw.reader(slot)
	// Shares are mostly held briefly: spin before the probe, the watch and
	// the sleep, which cost system calls.
	var spun time.Time
	for i := 1; wait && multicore; i++ {
		if atomic.LoadUint64(p)&readerShares == 0 {
			return nil
		}
		if i%spinYield == 0 {
			if now := time.Now(); spun.IsZero() {
				spun = now
			} else if now.Sub(spun) > shareSpin || rw.life.Closed() {
				break
			}
			runtime.Gosched()
		}
	}
	// Named before the first read of the events' word: a reader of the
	// slot whose last drop comes later signals it; one whose drop came
	// before left the line as the look below finds it.
	rw.draining(slot)
	var watched uint32
	stop := func() {}
	defer func() { stop() }()
	if ctx.Done() != nil {
		defer context.AfterFunc(ctx, rw.signalOpen)()
	}
	start := time.Now()
	for {
		seq := atomic.LoadUint32(rw.ev)
		if rw.life.Closed() {
			return rw.w.closedError("lock")
		}
		v := atomic.LoadUint64(p)
		if v&readerShares == 0 {
			return nil
		}
		id := uint32(v >> readerID)
		if id != watched {
			// Watch before the probe whose verdict is acted on: a death
			// after the probe then signals.
			stop()
			stop = region.Of(rw.w.r).WatchAttachment(id, rw.signalOpen)
			watched = id
		}
		h := region.Of(rw.w.r).ProbeAttachment(id).(shm.Holder)
		if h.State == shm.Dead {
			fault.Hit(fault.RWReaderProbedDead)
			// The CAS from the exact word probed: a share added or
			// dropped since, or a new claim, fails it.
			if atomic.CompareAndSwapUint64(p, v, 0) {
				fault.Hit(fault.RWReaderFreed)
				atomic.AddUint64(&rw.w.line[rwFreed], 1)
			}
			continue
		}
		if !wait || ctx.Err() != nil {
			return rw.sharedError(ctx, v, start, h)
		}
		fault.Hit(fault.RWWriterWaiting)
		futex.Wait(rw.ev, seq, drainSleep)
	}
}

// shareSpin bounds how long a reader that meets a writer, and a writer that
// meets a reader's share, spin before they sleep: longer than a Mutex
// waiter's few loads, because each waits out the other's critical section
// and the one it meets in turn (a writer waits for a share, then writes),
// and a sleep and a wake cost tens of microseconds.
var shareSpin = 50 * time.Microsecond

// drainSleep bounds a writer's sleep on a reader line: the wake of a
// reader's last drop, or of the reader's death watch, usually comes first.
const drainSleep = 50 * time.Millisecond

// sharedError reports a wait for the write lock that ended while the
// attachment whose reader word is v held shares.
func (rw *RWMutex) sharedError(ctx context.Context, v uint64, start time.Time, h shm.Holder) error {
	err := ctx.Err()
	if err == nil {
		err = context.DeadlineExceeded
	}
	return &HeldError{Lock: rw.w.name(), Path: rw.w.r.Path(), Off: rw.w.off, Owner: v, Holder: h,
		Reader: true, Waited: time.Since(start), Err: err}
}

// BreakReader frees the shares of one attachment if, and only if, its reader
// word is exactly word (from a HeldError with Reader set, or an RWState):
// the administrator's way out when a reader cannot be verified dead but is
// known to be. It fails with ErrOwnerChanged if the word changed meanwhile
// (a share taken or dropped, or the line claimed again), and with
// ErrNotLocked if word holds no share.
func (rw *RWMutex) BreakReader(word uint64) error {
	if rw.life.Closed() {
		return rw.w.closedError("break")
	}
	if word&readerShares == 0 {
		return &BreakError{Lock: rw.w.name(), Owner: word, Err: ErrNotLocked}
	}
	for s := 1; s <= rw.slots; s++ {
		p := rw.reader(s)
		if v := atomic.LoadUint64(p); v>>readerID == word>>readerID {
			// The owner ID stays: an attachment broken while alive
			// keeps counting its later shares where writers see them.
			if !atomic.CompareAndSwapUint64(p, word, word&^readerShares) {
				return &BreakError{Lock: rw.w.name(), Owner: word, Now: v, Err: ErrOwnerChanged}
			}
			atomic.AddUint64(&rw.w.line[rwFreed], 1)
			rw.signal(0)
			return nil
		}
	}
	return &BreakError{Lock: rw.w.name(), Owner: word, Err: ErrOwnerChanged}
}

// Break frees the writers' lock if its owner word is exactly owner, as
// Mutex.Break does.
func (rw *RWMutex) Break(owner uint64) error { return rw.w.Break(owner) }

// RWState is an RWMutex at one moment, as InspectRW reads it.
type RWState struct {
	Writer       State    // the writers' lock
	Readers      []Reader // the attachments that hold shares, in slot order
	ReadersFreed uint64   // attachments gone whose shares were freed so far (not one whose freer died before counting it)
}

// Reader is an attachment that holds shares of an RWMutex.
type Reader struct {
	Word   uint64 // the raw reader word (the value BreakReader takes)
	Shares uint32
	Holder shm.Holder
}

// Inspect reads rw's state and probes its holders. It writes nothing to the
// region. It panics if the region was closed.
func (rw *RWMutex) Inspect() RWState {
	s := RWState{Writer: rw.w.Inspect(), ReadersFreed: atomic.LoadUint64(&rw.w.line[rwFreed])}
	rw.claimed(func(slot int) bool {
		if v := atomic.LoadUint64(rw.reader(slot)); v&readerShares != 0 {
			s.Readers = append(s.Readers, Reader{Word: v, Shares: uint32(v),
				Holder: region.Of(rw.w.r).ProbeAttachment(uint32(v >> readerID)).(shm.Holder)})
		}
		return true
	})
	return s
}

// InspectRW returns the RWState of the RWMutex at offset off of r without
// writing anything, so r may be open read-only. It fails with shm.ErrInvalid
// if no RWMutex was made at off.
func InspectRW(r *shm.Region, off int) (RWState, error) {
	p := region.Of(r)
	l, err := p.Line(off)
	if err != nil {
		return RWState{}, err
	}
	// Its lines have storage only if it was placed; reading holes through
	// a read-only mapping could fault on a full file system.
	size := RWMutexSize(p.Slots()) - shm.LineSize
	if pl, ok := p.Placement(off); !ok || pl.Kind != region.KindRWMutex || pl.Size != size {
		return RWState{}, &shm.Error{Op: "inspect", Path: r.Path(), Kind: shm.ErrInvalid,
			Detail: "no RWMutex at offset " + strconv.Itoa(off)}
	}
	b, err := p.Span(off+shm.LineSize, size)
	if err != nil {
		return RWState{}, err
	}
	rw := &RWMutex{w: &Mutex{line: l, word: &l[line.Owner], r: r, off: off}}
	rw.point(b, p.Slots())
	return rw.Inspect(), nil
}
