//go:build linux

package shmlock_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// The bounds in which a death is found while many processes wait (see the
// README's guarantees), with room for a loaded machine: 64 waiting processes
// on 2 cores.
const (
	// the prober alive: its schedule (probe mode, a pidfd watch making it
	// prompt) or the kernel (robust mode), or the safety-net schedule
	// (robust mode, a word the kernel could not reach)
	deathBound = 250 * time.Millisecond
	// the prober died too: its lease is taken over within two lease
	// periods (2 × 50 ms), then the new prober probes
	proberDeathBound = 400 * time.Millisecond
)

// spawnWaiters starts n "wait" children and waits until they are all asleep
// on the lock.
func (h *harness) spawnWaiters(n int, env ...string) []*child {
	var cs []*child
	before := h.load(offWaiting)
	for range n {
		cs = append(cs, h.spawnIn(h.path, env, "wait"))
	}
	h.eventually(30*time.Second, "the waiters did not start", func() bool { return h.load(offWaiting) >= before+uint64(n) })
	time.Sleep(300 * time.Millisecond) // asleep in the futex
	return cs
}

// takeover kills the holder and checks that the waiters take the lock over,
// one of them told, within bound; it returns the time from the death to the
// first acquisition.
func (h *harness) takeover(t *testing.T, holder *child, waiters []*child, bound time.Duration, also ...*child) time.Duration {
	died := monotonic()
	for _, c := range also {
		c.Kill()
	}
	holder.Kill()
	h.eventually(10*time.Second, "no waiter took the lock over", func() bool { return h.load(offFirst) != 0 })
	took := time.Duration(int64(h.load(offFirst)) - died)
	recovered := 0
	for _, c := range waiters {
		out := c.Wait(t, 30*time.Second)
		require.Contains(t, out, "recovered=", out)
		if strings.Contains(out, "recovered=true") {
			recovered++
		}
	}
	assert.Equal(t, 1, recovered, "exactly one waiter is told of the death")
	assert.EqualValues(t, 1, h.load(offRecovered))
	assert.Zero(t, h.load(offViolation), "two holders at once")
	assert.Less(t, took, bound, "death → first acquisition")
	return took
}

// A holder dies while 64 processes wait on its lock: one of them takes it
// over, told, within deathBound, in both modes; in robust mode also when
// the kernel cannot mark the word (the holder unmapped it without Close).
func TestTakeoverManyWaiters(t *testing.T) {
	cases := []struct {
		mode shm.Mode
		role string
	}{{shm.ModeProbe, "hold"}, {shm.ModeRobust, "hold"}, {shm.ModeRobust, "hold-unmap"}}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v/%s", c.mode, c.role), func(t *testing.T) {
			h := newModeHarness(t, 120*time.Second, c.mode)
			holder := h.spawn(c.role)
			h.waitHeld()
			waiters := h.spawnWaiters(64)
			took := h.takeover(t, holder, waiters, deathBound)
			t.Logf("64 waiters: death → acquired in %v", took)
		})
	}
}

// The prober dies with the holder: another waiter takes the lease over and
// finds the death within proberDeathBound. In robust mode the holder
// unmapped its lock without Close, so only a probe can find it.
func TestProberDies(t *testing.T) {
	for _, c := range []struct {
		mode shm.Mode
		role string
	}{{shm.ModeProbe, "hold"}, {shm.ModeRobust, "hold-unmap"}} {
		t.Run(c.mode.String(), func(t *testing.T) {
			h := newModeHarness(t, 120*time.Second, c.mode)
			holder := h.spawn(c.role)
			h.waitHeld()
			line, err := region.Of(h.r).Line(offMutex)
			require.NoError(t, err)
			prober := h.spawnWaiters(1)
			require.NotZero(t, atomic.LoadUint64(shmlock.WaitWord(line))&shmlock.Probing, "the first waiter is the prober")
			lease := atomic.LoadUint64(shmlock.WaitWord(line))
			waiters := h.spawnWaiters(16)
			require.Equal(t, lease&(1<<33-1)>>32, atomic.LoadUint64(shmlock.WaitWord(line))&(1<<33-1)>>32)
			took := h.takeover(t, holder, waiters, proberDeathBound, prober[0])
			t.Logf("prober and holder dead: → acquired in %v", took)
		})
	}
}

// deadHolder leaves the lock held by a holder that is dead, unmarked: in probe
// mode a killed process, in robust mode an attachment that is gone (which no
// robust list marks).
func (h *harness) deadHolder(t *testing.T, mode shm.Mode) {
	t.Helper()
	if mode == shm.ModeRobust {
		h.setOwner(5<<32 | uint64(h.goneTID(t, true)))
	} else {
		holder := h.spawn("hold")
		h.waitHeld()
		holder.Kill()
	}
}

// A waiter whose context is already done still takes over a holder it finds
// dead, and is told: the death is not left to waiters that may never come.
// (In robust mode the holder is one the kernel could not mark: an
// attachment that is gone.)
func TestDeadlineTakesOverDeadHolder(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		h.deadHolder(t, mode)
		out := h.spawn("acquire-expired").Wait(t, 20*time.Second)
		assert.Contains(t, out, "recovered=true", "a done context gave up on a dead holder")
		told, err := h.acquire(time.Second)
		require.NoError(t, err, "the lock is wedged")
		assert.False(t, told, "the death was told twice")
	})
}

// Goroutines of one process waiting for one Mutex hold one thread between
// them, not one each: the others wait in the process, so that thousands of
// waiting goroutines cannot exhaust the runtime's threads.
func TestGoroutinesShareAThread(t *testing.T) {
	const n = 300
	h := newHarness(t, 60*time.Second)
	h.mu.Lock()
	before := proctest.Threads(t)
	var got atomic.Int32
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if g, err := h.mu.Acquire(ctx); err == nil {
				g.Release()
				got.Add(1) // after the release: Close must not race it
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // all waiting
	during := proctest.Threads(t)
	t.Logf("%d goroutines waiting: threads %d before, %d during", n, before, during)
	h.mu.Unlock()
	h.eventually(30*time.Second, "the waiters did not all get the lock", func() bool { return got.Load() == n })
	assert.LessOrEqual(t, during, before+20, "a thread per waiting goroutine")
}

// A context that ends wakes its own waiter, not every sleeper of every
// process: eight processes asleep on a held lock barely wake while this one
// gives up 200 timed waits.
func TestDeadlineWakesOnlyItsWaiter(t *testing.T) {
	h := newHarness(t, 60*time.Second)
	h.mu.Lock()
	waiters := h.spawnWaiters(8)
	before, start := h.wakeups(t, waiters), time.Now()
	for range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := h.mu.Acquire(ctx)
		cancel()
		require.Error(t, err)
	}
	took := time.Since(start)
	woke := h.wakeups(t, waiters) - before
	// The sleepers' own timers and the runtime's threads wake them too:
	// as often again while nothing happens.
	time.Sleep(took)
	idle := h.wakeups(t, waiters) - before - woke
	t.Logf("8 sleepers woke %d times while 200 timed waits ended (%v), %d times in as long idle", woke, took, idle)
	assert.Less(t, woke-idle, 8*200*3/4, "every sleeper woke at every timed wait's end (that makes at least 8*200)")
	h.mu.Unlock()
	for _, c := range waiters {
		c.Wait(t, 30*time.Second)
	}
}

// wakeups sums the voluntary context switches of the children's threads.
func (h *harness) wakeups(t *testing.T, cs []*child) int {
	n := 0
	for _, c := range cs {
		dir := fmt.Sprintf("/proc/%d/task", c.Pid())
		tasks, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, task := range tasks {
			k, _ := proctest.StatusValue(dir+"/"+task.Name()+"/status", "voluntary_ctxt_switches:")
			n += k // 0 for a thread that ended
		}
	}
	return n
}

// A word reserved for sleepers when there are none (its releaser died before
// it undid the reservation), under the lease of a dead prober: TryLock and
// TryAcquire undo the reservation and take the lock, and Lock takes it after
// reservedWait, not after a lease period. With a sleeper left, TryLock wakes
// it to take the word and fails.
func TestReservedWords(t *testing.T) {
	h := newHarness(t, 60*time.Second)
	line, err := region.Of(h.r).Line(offMutex)
	require.NoError(t, err)
	reserve := func() {
		w := h.load(offMutex)
		h.setOwner(w&^(1<<32-1) + 1<<32 | 1<<31) // owner 0, the waiters bit: reserved
		atomic.StoreUint64(shmlock.WaitWord(line), shmlock.Probing|41)
	}
	reserve()
	require.True(t, h.mu.TryLock(), "TryLock left a reservation nobody can take")
	h.mu.Unlock()
	reserve()
	g, ok := h.mu.TryAcquire()
	require.True(t, ok, "TryAcquire left a reservation nobody can take")
	g.Release()
	reserve()
	start := time.Now()
	h.mu.Lock()
	took := time.Since(start)
	t.Logf("Lock of a reserved word without sleepers: %v", took)
	assert.Less(t, took, 25*time.Millisecond, "Lock waited out a lease period")

	// The premise is a sleeper in the futex: TryLock wakes it. One that is
	// not in it at that moment (not asleep yet, or between two of its timed
	// sleeps, slow under -race) lets TryLock undo the reservation, rightly,
	// and take the lock; the sleeper goes on waiting, and the test reserves
	// the word again. A TryLock that ignores sleepers takes it every time.
	sleeper := h.spawnWaiters(1)[0]
	h.waitSleepers() // the waiters bit is its last step before the futex
	const tries = 10
	taken := 0
	for ; taken < tries; taken++ {
		time.Sleep(200 * time.Millisecond)
		reserve()
		if !h.mu.TryLock() {
			break
		}
	}
	t.Logf("TryLock took a reserved word %d times: the sleeper was not in the futex", taken)
	require.Less(t, taken, tries, "TryLock took a word reserved for a sleeper, every time")
	assert.Contains(t, sleeper.Wait(t, 10*time.Second), "recovered=false", "the sleeper did not take its word")
}

// Sixty-four processes each hold the lock for 2 ms asleep, so that the
// queue's round (128 ms) outlasts a sleeper's 50 ms timer, which sends it to
// the back of the futex's queue: the oldest waiters are still served first,
// and nobody waits for a third of the run.
func TestOldestServedFirst(t *testing.T) {
	const n, holdMS = 64, 2
	h := newHarness(t, 60*time.Second)
	h.mu.Lock()
	var cs []*child
	for range n {
		cs = append(cs, h.spawn("fair", strconv.Itoa(holdMS)))
	}
	time.Sleep(200 * time.Millisecond)
	h.mu.Unlock()
	time.Sleep(3 * time.Second)
	*h.word(offStop) = 1
	fewest, longest := 1<<30, 0
	for _, c := range cs {
		var ops, us int
		out := c.Wait(t, 30*time.Second)
		_, err := fmt.Sscanf(strings.TrimSpace(out), "ops=%d longest=%d", &ops, &us)
		require.NoError(t, err, out)
		fewest, longest = min(fewest, ops), max(longest, us)
	}
	t.Logf("%d processes, 3 s: fewest acquisitions %d, longest wait %v", n, fewest, time.Duration(longest)*time.Microsecond)
	assert.Less(t, time.Duration(longest)*time.Microsecond, 1200*time.Millisecond, "a waiter waited for a third of the run")
	assert.Zero(t, h.load(offViolation), "two holders at once")
}

// A sleeper woken for a reserved word whose region is closed at that moment
// returns without the lock, and hands the word on: it is not left reserved
// for nobody (with another sleeper, that one would sleep out its timer).
func TestClosedSleeperHandsOnItsWake(t *testing.T) {
	defer shmlock.SetStarveAfter(time.Millisecond)()
	dir := shmTempDir(t)
	left := 0
	for i := range 10 {
		path := filepath.Join(dir, strconv.Itoa(i))
		r1, err := shm.Open(path, shm.Options{Size: 64 << 10})
		require.NoError(t, err)
		m1, err := shmlock.New(r1, 0)
		require.NoError(t, err)
		r2, err := shm.Open(path, shm.Options{Size: 64 << 10})
		require.NoError(t, err)
		m2, err := shmlock.New(r2, 0)
		require.NoError(t, err)
		line, err := region.Of(r1).Line(0)
		require.NoError(t, err)
		m1.Lock()
		done := make(chan bool, 1)
		go func() {
			defer func() { done <- recover() != nil }()
			m2.Lock() // panics with ErrClosed once r2 is closed
		}()
		deadline := time.Now().Add(10 * time.Second)
		for atomic.LoadUint64(shmlock.WaitWord(line))&shmlock.Starving == 0 {
			require.True(t, time.Now().Before(deadline), "the sleeper never named its age class")
			time.Sleep(100 * time.Microsecond)
		}
		time.Sleep(2 * time.Millisecond)
		m1.Unlock() // reserved for the sleeper, and wakes it
		r2.Close()
		if closed := <-done; closed && atomic.LoadUint64(&line[0])&(1<<32-1) == 1<<31 {
			left++
		}
		r1.Close()
	}
	assert.Zero(t, left, "a reserved word was left for nobody")
}

// A prober lease whose holder stopped (here: written by nobody alive) is
// taken over while the lock is busy, although no single wait lasts a lease
// period: each process remembers the lease across its waits. Otherwise the
// next death would wait out a lease period.
func TestStaleLeaseTakenOverWhileBusy(t *testing.T) {
	h := newModeHarness(t, 60*time.Second, shm.ModeProbe)
	line, err := region.Of(h.r).Line(offMutex)
	require.NoError(t, err)
	const stale = shmlock.Probing | 41
	atomic.StoreUint64(shmlock.WaitWord(line), stale)
	var ws []*child
	for i := range 3 {
		ws = append(ws, h.spawn("increment", strconv.Itoa(i), "0"))
	}
	h.eventually(10*time.Second, "the stale lease was never taken over", func() bool {
		return atomic.LoadUint64(shmlock.WaitWord(line))&(shmlock.Probing|(1<<32-1)) != stale
	})
	*h.word(offStop) = 1
	for _, c := range ws {
		c.Wait(t, 20*time.Second)
	}
}
