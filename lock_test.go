//go:build linux

package shmlock_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/owner"
	"github.com/shmlock/shmlock/shm"
)

// recoveryBound is how soon after a holder's death a waiter must have the
// lock. The design gives well under 20 ms; the bound leaves room for a
// loaded CI machine.
const recoveryBound = 2 * time.Second

// A holder SIGKILLed while holding: a waiter in another process gets the lock,
// told that it recovered, within the bound.
func TestHolderKilledWaiterRecovers(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		holder := h.spawn("hold")
		h.waitHeld()
		waiter := h.spawn("wait")
		h.waitSleepers()

		killed := monotonic()
		holder.Kill()
		out := waiter.Wait(t, recoveryBound+time.Second)
		assert.Contains(t, out, "recovered=true")
		latency := time.Duration(int64(h.load(offAcquired)) - killed)
		t.Logf("kill → acquire: %v", latency)
		assert.Less(t, latency, recoveryBound)
		assert.EqualValues(t, 1, h.mu.Inspect().Recoveries, "the region counts the recovery")
		assert.Zero(t, h.load(offViolation))
		assert.False(t, h.mu.Inspect().Held)
	})
}

// A waiter whose next probe is half a minute away still takes over at once
// from a holder that dies: the death watch armed at its first probe wakes it.
// With a reader of the holder's /proc files at work (as ps, top or another
// waiter's probe are), the liveness lock may outlast the exit the watch saw by
// a moment: the waiter must probe again soon, not wait for its schedule.
func TestDeathWatchWakesWaiter(t *testing.T) {
	for _, procReader := range []bool{false, true} {
		t.Run(fmt.Sprintf("procReader=%v", procReader), func(t *testing.T) {
			runs := 1
			if procReader {
				runs = 20 // the race is narrow: without the quick re-probe, 1 in 12 wedged
			}
			for range runs {
				h := newModeHarness(t, 60*time.Second, shm.ModeProbe)
				holder := h.spawn("hold")
				pid := h.waitHeld()
				waiter := h.spawnIn(h.path, []string{slowProbesEnv + "=1"}, "wait")
				h.waitSleepers()
				time.Sleep(50 * time.Millisecond) // past its first probe, 200 µs in
				stop := make(chan struct{})
				var readers sync.WaitGroup
				if procReader {
					readers.Add(2)
					for range 2 {
						go func() {
							defer readers.Done()
							for {
								select {
								case <-stop:
									return
								default:
									os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
								}
							}
						}()
					}
				}
				killed := monotonic()
				holder.Kill()
				out := waiter.Wait(t, 5*time.Second)
				close(stop)
				readers.Wait()
				require.Contains(t, out, "recovered=true")
				assert.Zero(t, h.load(offViolation))
				t.Logf("kill → acquire: %v", time.Duration(int64(h.load(offAcquired))-killed))
			}
		})
	}
}

// A normal unlock is never reported as a recovery, even to a waiter that slept.
func TestNormalUnlockIsNotRecovery(t *testing.T) {
	h := newHarness(t, 60*time.Second)
	h.spawn("hold-release", "300")
	h.waitHeld()
	out := h.spawn("wait").Wait(t, 20*time.Second)
	assert.Contains(t, out, "recovered=false")
	assert.Zero(t, h.mu.Inspect().Recoveries)
	assert.Zero(t, h.load(offRecovered))
}

// Eight processes wait; the holder is killed: exactly one recovers, all get
// the lock in turn, and never two at once.
func TestThunderingHerd(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		const n = 8
		h := newModeHarness(t, 60*time.Second, mode)
		holder := h.spawn("hold")
		h.waitHeld()
		var waiters []*child
		for range n {
			waiters = append(waiters, h.spawn("wait"))
		}
		h.waitSleepers()
		time.Sleep(100 * time.Millisecond) // let all eight reach the slow path
		holder.Kill()
		recovered := 0
		for _, w := range waiters {
			out := w.Wait(t, 20*time.Second)
			if strings.Contains(out, "recovered=true") {
				recovered++
			} else {
				assert.Contains(t, out, "recovered=false")
			}
		}
		assert.Equal(t, 1, recovered, "exactly one waiter recovers")
		assert.EqualValues(t, 1, h.load(offRecovered))
		assert.EqualValues(t, 1, h.mu.Inspect().Recoveries)
		assert.Zero(t, h.load(offViolation), "two holders at once")
	})
}

// The recoverer itself dies in the middle of its recovery (after taking the
// lock over, before releasing it), several times over: each time another
// process recovers.
func TestRecovererKilledMidRecovery(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		const n = 3
		h := newModeHarness(t, 60*time.Second, mode)
		holder := h.spawn("hold")
		h.waitHeld()
		byPid := map[int]*child{}
		for range n {
			c := h.spawn("recover-hang")
			byPid[c.Pid()] = c
		}
		h.waitSleepers()
		holder.Kill()
		last := 0
		for i := range n {
			h.eventually(recoveryBound, fmt.Sprintf("recovery %d never happened", i+1), func() bool {
				p := int(h.load(offRecoverer))
				return p != 0 && p != last
			})
			last = int(h.load(offRecoverer))
			byPid[last].Kill() // dies holding the lock it just took over
		}
		// The test process is the last one standing and recovers too.
		ctx, cancel := context.WithTimeout(context.Background(), recoveryBound)
		defer cancel()
		g, err := h.mu.Acquire(ctx)
		require.NoError(t, err)
		assert.True(t, g.Recovered())
		g.Commit()
		g.Release()
		assert.EqualValues(t, n+1, h.mu.Inspect().Recoveries)
		assert.Zero(t, h.load(offViolation))
	})
}

// A holder that was killed but not yet reaped is a zombie: kill(pid, 0) still
// succeeds on it, and it must be recovered all the same. In robust mode the
// kernel marked its lock before it became one.
func TestZombieHolder(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		holder := h.spawn("hold")
		pid := h.waitHeld()
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL)) // and do not reap it
		// A killed process is Z while its other threads are still being torn
		// down; wait until only the zombie leader is left.
		h.eventually(5*time.Second, "the holder never became a zombie", func() bool {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			st, err := owner.ParseStat(b)
			return err == nil && st.State == 'Z' && st.Threads <= 1
		})
		require.NoError(t, syscall.Kill(pid, 0), "kill(pid, 0) succeeds on a zombie")

		snap := h.mu.Inspect()
		if mode == shm.ModeRobust {
			assert.False(t, snap.Held, "the kernel freed the lock at the holder's exit")
			assert.True(t, snap.OwnerDied, "and marked it")
		} else {
			assert.Equal(t, shm.Dead, snap.Holder.State, snap.Holder.String())
			assert.Contains(t, snap.Holder.Reason, "zombie")
		}

		ctx, cancel := context.WithTimeout(context.Background(), recoveryBound)
		defer cancel()
		g, err := h.mu.Acquire(ctx) // the test process is the waiter
		require.NoError(t, err)
		assert.True(t, g.Recovered())
		g.Release()
		holder.Kill()
	})
}

// A holder that is stopped (SIGSTOP, a debugger) is alive and is not robbed:
// a timed wait fails with an error that names it and says so.
func TestStoppedHolderIsNotRobbed(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		holder := h.spawn("hold")
		pid := h.waitHeld()
		require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := h.mu.Acquire(ctx)
		require.Error(t, err)
		assert.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond, "waited the whole deadline")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		var he *shmlock.HeldError
		require.ErrorAs(t, err, &he)
		assert.EqualValues(t, pid, he.Holder.PID)
		assert.Equal(t, shm.Alive, he.Holder.State)
		assert.Equal(t, byte('T'), he.Holder.ProcState)
		assert.GreaterOrEqual(t, he.HeldFor, 500*time.Millisecond)
		msg := err.Error()
		for _, want := range []string{h.path + "@0", "pid " + strconv.Itoa(pid), "alive", "stopped", "held for at least"} {
			assert.Contains(t, msg, want)
		}
		for _, want := range []string{"never robbed", "shmlock inspect " + h.path} {
			assert.Contains(t, he.Advice(), want)
		}
		t.Log(msg, he.Advice())
		assert.Zero(t, h.mu.Inspect().Recoveries)
		holder.Kill()
	})
}

// No lost updates: P processes × N increments under the lock give exactly P×N.
func TestNoLostUpdates(t *testing.T) {
	const p, n = 4, 1500
	h := newHarness(t, 120*time.Second)
	var ws []*child
	for i := range p {
		ws = append(ws, h.spawn("increment", strconv.Itoa(i), strconv.Itoa(n)))
	}
	for _, w := range ws {
		w.Wait(t, 100*time.Second)
	}
	assert.EqualValues(t, p*n, h.load(offCounter))
	assert.EqualValues(t, p*n, h.sumMine())
	assert.Zero(t, h.load(offViolation))
	assert.Zero(t, h.mu.Inspect().Recoveries)
}

// Holders killed at random: the final count equals the increments the workers
// committed, and there were never two holders at once.
func TestNoLostUpdatesUnderKills(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		const p = 4
		run := 3 * time.Second
		if testing.Short() {
			run = time.Second
		}
		h := newModeHarness(t, 120*time.Second, mode)
		workers := make([]*child, p)
		for i := range workers {
			workers[i] = h.spawn("increment", strconv.Itoa(i), "0")
		}
		kills := 0
		for end := time.Now().Add(run); time.Now().Before(end); {
			time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
			i := rand.IntN(p)
			workers[i].Kill()
			kills++
			workers[i] = h.spawn("increment", strconv.Itoa(i), "0")
		}
		*h.word(offStop) = 1
		for _, w := range workers {
			w.Wait(t, 30*time.Second)
		}
		// A worker killed holding the lock, with no one left to wait, still
		// holds it: the test process takes it over and repairs, as any
		// process would.
		ctx, cancel := context.WithTimeout(context.Background(), recoveryBound)
		defer cancel()
		g, err := h.mu.Acquire(ctx)
		require.NoError(t, err)
		if g.Recovered() {
			h.repair()
		}
		g.Release()

		counter, committed := h.load(offCounter), h.sumMine()
		t.Logf("%d kills, %d recoveries, %d increments", kills, h.mu.Inspect().Recoveries, counter)
		assert.Equal(t, committed, counter, "lost or double-counted increments")
		assert.Zero(t, h.load(offViolation), "two holders at once")
		assert.Positive(t, counter)
		assert.Positive(t, h.mu.Inspect().Recoveries, "no kill landed inside a critical section: the test proved nothing")
	})
}

// A panic inside a guarded critical section, in another process: the deferred
// Release frees the lock before the process dies (no recovery is needed), and
// the panic reaches the top with its value and the stack of its origin.
func TestPanicInCriticalSectionAcrossProcesses(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		c := h.spawn("panic")
		out := c.Wait(t, 20*time.Second)
		var ee *exec.ExitError
		require.ErrorAs(t, c.Err, &ee)
		assert.Equal(t, 2, ee.ExitCode(), "an unrecovered panic exits with status 2")
		assert.Contains(t, out, "panic: boom in the critical section")
		assert.Contains(t, out, "helpers_test.go", "the stack points at the panicking line")
		s := h.mu.Inspect()
		assert.False(t, s.Held, "the lock was released by the deferred Release")
		assert.Zero(t, s.Recoveries, "a released lock needs no recovery")
		assert.True(t, h.mu.TryLock())
		h.mu.Unlock()
	})
}

// The same in one process, where the panic can be caught above the guard.
func TestPanicInCriticalSection(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	var recovered any
	func() {
		defer func() { recovered = recover() }()
		g, err := h.mu.Acquire(context.Background())
		require.NoError(t, err)
		defer g.Release()
		panic("boom")
	}()
	assert.Equal(t, "boom", recovered, "the panic reaches the caller with its value")
	assert.True(t, h.mu.TryLock(), "the lock is free")
	h.mu.Unlock()
}

func TestFastPathAndFence(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	var mu sync.Locker = h.mu
	mu.Lock()
	assert.False(t, h.mu.TryLock())
	mu.Unlock()
	assert.True(t, h.mu.TryLock())
	h.mu.Unlock()
	g1, err := h.mu.Acquire(context.Background())
	require.NoError(t, err)
	assert.False(t, g1.Recovered())
	g1.Release()
	g1.Release() // a second release is a no-op, not a double unlock
	g2, _ := h.mu.Acquire(context.Background())
	assert.Equal(t, g1.Fence()+1, g2.Fence(), "the fencing token grows by one per acquisition")
	assert.EqualValues(t, 4, g2.Fence())
	g2.Release()
	assert.False(t, h.mu.Inspect().Held)
}

// assertNotHeld calls f, which must panic with an error matching ErrNotHeld.
func assertNotHeld(t *testing.T, f func()) {
	t.Helper()
	defer func() {
		err, _ := recover().(error)
		assert.ErrorIs(t, err, shmlock.ErrNotHeld)
	}()
	f()
}

// Unlock of a lock this process does not hold panics with ErrNotHeld, and so
// does the Unlock of a holder whose lock an administrator broke: it can never
// release the new holder's lock.
func TestUnlockNotHeldAndBreak(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	assertNotHeld(t, h.mu.Unlock)

	// A second attachment in this process stands in for another process.
	other, err := openEnv(h.path)
	require.NoError(t, err)
	defer other.r.Close()
	other.mu.Lock()
	assertNotHeld(t, h.mu.Unlock)

	s := h.mu.Inspect()
	require.True(t, s.Held)
	assert.ErrorIs(t, h.mu.Break(s.Owner+1<<32), shmlock.ErrOwnerChanged, "a stale owner value breaks nothing")
	assert.ErrorIs(t, h.mu.Break(0), shmlock.ErrNotLocked)
	require.NoError(t, h.mu.Break(s.Owner))
	assert.True(t, h.mu.Inspect().OwnerDied)

	g, err := h.mu.Acquire(context.Background())
	require.NoError(t, err)
	assert.True(t, g.Recovered(), "the next holder is told")
	assertNotHeld(t, other.mu.Unlock) // the broken holder cannot release the new hold
	assert.True(t, h.mu.Inspect().Held)
	g.Release()
	assert.EqualValues(t, 1, h.mu.Inspect().Recoveries)
}

// A Guard is a value, so a copy of it is a second handle on one hold. The
// copy's Release, after the hold it names ended and another began in the
// same process (the same owner), panics with ErrNotHeld and leaves the new
// hold alone; so does a Guard's Release after a Break.
func TestGuardReleasesOnlyItsHold(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	ctx := context.Background()
	g1, err := h.mu.Acquire(ctx)
	require.NoError(t, err)
	copy1 := g1
	g1.Release()
	g2, err := h.mu.Acquire(ctx)
	require.NoError(t, err)
	assertNotHeld(t, copy1.Release)
	s := h.mu.Inspect()
	assert.True(t, s.Held, "the copy did not release the later hold")
	assert.EqualValues(t, g2.Fence(), s.Generation)
	require.NoError(t, h.mu.Break(s.Owner))
	assertNotHeld(t, g2.Release)
	g3, err := h.mu.Acquire(ctx)
	require.NoError(t, err)
	assert.True(t, g3.Recovered())
	g3.Release()
	assert.False(t, h.mu.Inspect().Held)
}

// The told path allocates nothing: Acquire and TryAcquire return their Guard
// by value.
func TestToldPathDoesNotAllocate(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	ctx := context.Background()
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		g, err := h.mu.Acquire(ctx)
		if err != nil {
			panic(err)
		}
		defer g.Release()
		g.Commit()
	}), "Acquire")
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		g, ok := h.mu.TryAcquire()
		if !ok {
			panic("not acquired")
		}
		g.Release()
	}), "TryAcquire")
}

// Lock and TryLock cannot tell their callers that a holder died: the news
// stays in the word, through their holds and releases, until an Acquire
// is told, once.
func TestNewsOfDeathReachesAcquire(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		acquire := func() bool {
			g, err := h.mu.Acquire(context.Background())
			require.NoError(t, err)
			defer g.Release()
			g.Commit()
			return g.Recovered()
		}

		// Broken by an administrator, then taken by TryLock.
		h.mu.Lock()
		require.NoError(t, h.mu.Break(h.mu.Inspect().Owner))
		require.True(t, h.mu.TryLock())
		assert.True(t, h.mu.Inspect().OwnerDied)
		h.mu.Unlock()
		assert.True(t, acquire(), "the Acquire after TryLock is told")
		assert.False(t, acquire(), "and only that one")

		// A holder killed, its lock taken over by Lock.
		holder := h.spawn("hold")
		h.waitHeld()
		holder.Kill()
		h.mu.Lock()
		assert.True(t, h.mu.Inspect().OwnerDied)
		h.mu.Unlock()
		assert.True(t, acquire(), "the Acquire after Lock is told")
		assert.False(t, acquire())
		assert.EqualValues(t, 2, h.mu.Inspect().Recoveries, "one break, one takeover")
	})
}

// TryAcquire takes a free lock, or a dead holder's, without waiting, and is
// told; from a live holder it takes nothing and writes nothing.
func TestTryAcquire(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		g, ok := h.mu.TryAcquire()
		require.True(t, ok)
		assert.False(t, g.Recovered())
		g.Release()

		holder := h.spawn("hold")
		h.waitHeld()
		before := h.load(offMutex)
		_, ok = h.mu.TryAcquire()
		assert.False(t, ok, "a live holder")
		assert.Equal(t, before, h.load(offMutex), "nothing written")

		holder.Kill()
		g, ok = h.mu.TryAcquire()
		require.True(t, ok, "a dead holder")
		assert.True(t, g.Recovered())
		g.Release()
		assert.EqualValues(t, 1, h.mu.Inspect().Recoveries)

		h.mu.Lock()
		require.NoError(t, h.mu.Break(h.mu.Inspect().Owner))
		g, ok = h.mu.TryAcquire()
		require.True(t, ok, "a broken lock")
		assert.True(t, g.Recovered())
		g.Release()
	})
}

// Cancellation ends a wait promptly, with an error wrapping context.Canceled.
func TestAcquireCanceled(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	other, err := openEnv(h.path)
	require.NoError(t, err)
	defer other.r.Close()
	other.mu.Lock()
	defer other.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := h.mu.Acquire(ctx); errc <- err }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, context.Canceled)
		assert.Less(t, time.Since(start), 100*time.Millisecond)
		var he *shmlock.HeldError
		require.ErrorAs(t, err, &he)
		assert.Equal(t, shm.Alive, he.Holder.State)
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire ignored the cancellation")
	}
}

func TestPlacement(t *testing.T) {
	h := newHarness(t, 30*time.Second)
	for _, off := range []int{-64, 1, 32, regionSize, regionSize - 32} {
		_, err := shmlock.New(h.r, off)
		assert.ErrorIs(t, err, shm.ErrInvalid, "offset %d", off)
	}
	_, err := shmlock.New(h.r, regionSize-64)
	assert.NoError(t, err)
}
