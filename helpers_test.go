//go:build linux

package shmlock_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// The test region's data area. Children and parent agree on these offsets.
const (
	offMutex     = 0
	offCounter   = 64  // incremented under the lock
	offJournal   = 72  // worker index + 1 while an increment is in flight
	offInside    = 128 // owner ID of the holder inside the critical section, 0 if none
	offViolation = 136 // times two holders were inside at once
	offRecovered = 144 // acquisitions told Recovered()
	offHeld      = 152 // pid of a "hold" child once it holds
	offRecoverer = 160 // pid of the last "recover-hang" child that recovered
	offStop      = 168 // nonzero: workers stop
	offAcquired  = 176 // CLOCK_MONOTONIC ns of the last "wait" acquisition
	offFirst     = 184 // CLOCK_MONOTONIC ns of the first "wait" acquisition
	offWaiting   = 192 // "wait" children about to wait
	offMine      = 256 // per-worker committed increments, 8 bytes each
	maxWorkers   = 32
	regionSize   = offMine + 8*maxWorkers
)

const (
	// slowProbesEnv, set in a child's environment, spaces its probes of a
	// holder half a minute apart after the first.
	slowProbesEnv = "SHMLOCK_TEST_SLOW_PROBES"
	// starveEnv, set in a child's environment, makes every release with
	// sleepers hand the lock to them (starving at once).
	starveEnv = "SHMLOCK_TEST_STARVE"
)

func TestMain(m *testing.M) {
	if os.Getenv(slowProbesEnv) != "" {
		shmlock.SetProbeSchedule(200*time.Microsecond, 30*time.Second, 30*time.Second)
	}
	if os.Getenv(starveEnv) != "" {
		shmlock.SetStarveAfter(0)
	}
	proctest.DispatchFunc(runChild)
	os.Exit(m.Run())
}

// env is one process's view of the test region.
type env struct {
	r     *shm.Region
	mu    *shmlock.Mutex
	words []uint64 // the data area, taken once (Bytes makes system calls)
}

func openEnv(path string) (*env, error) { return openEnvIn(path, shm.ModeAuto) }

// openEnvIn opens the test region in mode. Children open it in ModeAuto, and
// so follow the mode their test created it in.
func openEnvIn(path string, mode shm.Mode) (*env, error) {
	r, err := shm.Open(path, shm.Options{Size: regionSize, Slots: 128, Mode: mode})
	if err != nil {
		return nil, err
	}
	mu, err := shmlock.New(r, offMutex)
	if err != nil {
		return nil, err
	}
	b, err := r.Bytes(0, regionSize)
	if err != nil {
		return nil, err
	}
	return &env{r: r, mu: mu, words: unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), regionSize/8)}, nil
}

func (e *env) word(off int) *uint64 { return &e.words[off/8] }

// enter and leave bracket a critical section. enter swaps our owner ID into
// the "inside" word: finding another there means two holders at once, unless
// we recovered from a holder that died inside. leave swaps it out again: not
// finding ours means someone entered while we were inside, which catches a
// recoverer that robbed a live holder.
func (e *env) enter(recovered bool) {
	if old := atomic.SwapUint64(e.word(offInside), uint64(region.Of(e.r).ID())); old != 0 && !recovered {
		atomic.AddUint64(e.word(offViolation), 1)
	}
}

func (e *env) leave() {
	if !atomic.CompareAndSwapUint64(e.word(offInside), uint64(region.Of(e.r).ID()), 0) {
		atomic.AddUint64(e.word(offViolation), 1)
	}
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// roles are the children's roles that open regions of their own (the crash
// tests add theirs, in fault builds); runChild's cases open the test region.
var roles = map[string]func(args []string) int{
	"robust-hold":     robustHold,
	"robust-churn":    robustChurn,
	"lock-as-user":    lockAsUser,
	"full-fs":         fullFS,
	"probe-then-wait": probeThenWait,
}

// runChild plays role, in a child: args[0] is the test region's path.
func runChild(role string, args []string) int {
	if f, ok := roles[role]; ok {
		return f(args)
	}
	e, err := openEnv(args[0])
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	ctx := context.Background()
	switch role {
	case "hold": // hold the lock until killed
		g, err := e.mu.Acquire(ctx)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		e.enter(g.Recovered())
		atomic.StoreUint64(e.word(offHeld), uint64(os.Getpid()))
		select {}

	case "hold-unmap": // hold the lock, unmap its page without Close, wait to be killed
		if _, err := e.mu.Acquire(ctx); err != nil {
			fmt.Println(err)
			return 1
		}
		page := uintptr(unsafe.Pointer(e.word(offMutex))) &^ uintptr(os.Getpagesize()-1)
		atomic.StoreUint64(e.word(offHeld), uint64(os.Getpid()))
		if _, _, errno := syscall.Syscall(syscall.SYS_MUNMAP, page, uintptr(os.Getpagesize()), 0); errno != 0 {
			fmt.Println("munmap:", errno)
			return 1
		}
		fmt.Println("unmapped")
		select {}

	case "hold-release": // hold for args[1] ms, then release normally
		ms, _ := strconv.Atoi(args[1])
		g, _ := e.mu.Acquire(ctx)
		e.enter(g.Recovered())
		atomic.StoreUint64(e.word(offHeld), uint64(os.Getpid()))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		e.leave()
		g.Commit()
		g.Release()
		return 0

	case "wait": // wait for the lock, note whether we recovered, release
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		atomic.AddUint64(e.word(offWaiting), 1)
		g, err := e.mu.Acquire(ctx)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		now := uint64(monotonic())
		atomic.StoreUint64(e.word(offAcquired), now)
		atomic.CompareAndSwapUint64(e.word(offFirst), 0, now)
		e.enter(g.Recovered())
		if g.Recovered() {
			atomic.AddUint64(e.word(offRecovered), 1)
		}
		time.Sleep(2 * time.Millisecond)
		e.leave()
		g.Commit()
		g.Release()
		fmt.Printf("recovered=%v\n", g.Recovered())
		return 0

	case "fair": // until stopped: Acquire, hold args[1] ms asleep, release; then say ops and longest wait
		ms, _ := strconv.Atoi(args[1])
		ops, longest := 0, time.Duration(0)
		for atomic.LoadUint64(e.word(offStop)) == 0 {
			t0 := time.Now()
			g, err := e.mu.Acquire(ctx)
			if err != nil {
				fmt.Println(err)
				return 1
			}
			longest = max(longest, time.Since(t0))
			e.enter(g.Recovered())
			time.Sleep(time.Duration(ms) * time.Millisecond)
			e.leave()
			g.Commit()
			g.Release()
			ops++
		}
		fmt.Printf("ops=%d longest=%d\n", ops, longest.Microseconds())
		return 0

	case "timed": // until stopped: Acquire with a 1 ms timeout, release at once if it got the lock
		for atomic.LoadUint64(e.word(offStop)) == 0 {
			ctx, cancel := context.WithTimeout(ctx, time.Millisecond)
			g, err := e.mu.Acquire(ctx)
			cancel()
			if err == nil {
				e.enter(g.Recovered())
				e.leave()
				g.Commit()
				g.Release()
			}
		}
		return 0

	case "acquire-expired": // Acquire with a context already done; say what came of it
		ctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		g, err := e.mu.Acquire(ctx)
		if err != nil {
			fmt.Printf("err=%v\n", err)
			return 0
		}
		e.enter(g.Recovered())
		e.leave()
		g.Commit()
		g.Release()
		fmt.Printf("recovered=%v\n", g.Recovered())
		return 0

	case "recover-hang": // wait; if we recovered, hang inside (to be killed)
		g, err := e.mu.Acquire(ctx)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		e.enter(g.Recovered())
		if g.Recovered() {
			atomic.AddUint64(e.word(offRecovered), 1)
			atomic.StoreUint64(e.word(offRecoverer), uint64(os.Getpid()))
			select {}
		}
		e.leave()
		g.Commit()
		g.Release()
		return 0

	case "increment": // args: path, worker index, count (0: until stopped)
		i, _ := strconv.Atoi(args[1])
		n, _ := strconv.Atoi(args[2])
		for k := 0; n == 0 || k < n; k++ {
			if n == 0 && atomic.LoadUint64(e.word(offStop)) != 0 {
				break
			}
			e.increment(i)
		}
		return 0

	case "attach-tid": // say the owner value our lock records, and exit; args[1] "close": Close first
		owner, err := region.Of(e.r).OwnerFor(offMutex)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Printf("owner=%d\n", owner)
		if len(args) > 1 && args[1] == "close" {
			e.r.Close()
		}
		return 0

	case "hold-close": // take the lock, then close the region while holding it
		if _, err := e.mu.Acquire(ctx); err != nil {
			fmt.Println(err)
			return 1
		}
		atomic.StoreUint64(e.word(offHeld), uint64(os.Getpid()))
		e.r.Close()
		fmt.Println("closed")
		return 0

	case "linger": // stay attached, doing nothing, until killed
		select {}

	case "panic": // panic inside a guarded critical section
		g, _ := e.mu.Acquire(ctx)
		defer g.Release()
		e.enter(g.Recovered())
		panic("boom in the critical section")
	}
	fmt.Println("unknown role", role)
	return 2
}

// increment adds one to the shared counter and to this worker's own count,
// under the lock, with a journal that lets a recoverer finish the increment
// of a worker killed between the two stores. The read-modify-write of the
// counter is deliberately not atomic, and slow, so that two holders at once
// would lose updates.
func (e *env) increment(i int) {
	g, err := e.mu.Acquire(context.Background())
	if err != nil {
		panic(err)
	}
	defer g.Release()
	e.enter(g.Recovered())
	if g.Recovered() {
		atomic.AddUint64(e.word(offRecovered), 1)
		e.repair()
	}
	atomic.StoreUint64(e.word(offJournal), uint64(i+1))
	c := atomic.LoadUint64(e.word(offCounter))
	for t := time.Now(); time.Since(t) < 20*time.Microsecond; {
	}
	atomic.StoreUint64(e.word(offCounter), c+1)
	atomic.AddUint64(e.word(offMine+8*i), 1)
	atomic.StoreUint64(e.word(offJournal), 0)
	e.leave()
	g.Commit()
}

// repair completes the increment of a worker that died between bumping the
// counter and its own count.
func (e *env) repair() {
	j := atomic.LoadUint64(e.word(offJournal))
	if j == 0 {
		return
	}
	if atomic.LoadUint64(e.word(offCounter)) == e.sumMine()+1 {
		atomic.AddUint64(e.word(offMine+8*int(j-1)), 1)
	}
	atomic.StoreUint64(e.word(offJournal), 0)
}

func (e *env) sumMine() uint64 {
	var s uint64
	for i := range maxWorkers {
		s += atomic.LoadUint64(e.word(offMine + 8*i))
	}
	return s
}

// child is a re-executed test binary playing a role.
type child = proctest.Child

type syncBuffer = proctest.Buffer

// harness owns a test's region and children (proctest), and its watchdog.
type harness struct {
	*proctest.Harness
	t    *testing.T
	path string
	*env
}

// modes are the locking modes the tests of death and recovery run in.
var modes = []shm.Mode{shm.ModeProbe, shm.ModeRobust}

// inModes runs f as a subtest in each mode.
func inModes(t *testing.T, f func(t *testing.T, mode shm.Mode)) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) { f(t, mode) })
	}
}

// newHarness creates a fresh region in /dev/shm for the test, in the default
// mode, and a watchdog that kills every child and fails the test if it runs
// longer than limit.
func newHarness(t *testing.T, limit time.Duration) *harness {
	return newModeHarness(t, limit, shm.ModeAuto)
}

// newModeHarness is newHarness with a region created in mode.
func newModeHarness(t *testing.T, limit time.Duration, mode shm.Mode) *harness {
	path := fmt.Sprintf("%s/shmlock-test-%d-%s", shm.Dir, os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	os.Remove(path)
	e, err := openEnvIn(path, mode)
	require.NoError(t, err)
	// Cleanups run last first: the children are killed, then the region
	// closed and removed.
	t.Cleanup(func() { e.r.Close(); os.Remove(path) })
	return &harness{Harness: proctest.New(t, limit), t: t, path: path, env: e}
}

func (h *harness) spawn(role string, args ...string) *child {
	h.t.Helper()
	return h.spawnIn(h.path, nil, role, args...)
}

// spawnIn starts a child on the region at path, with extra environment.
func (h *harness) spawnIn(path string, env []string, role string, args ...string) *child {
	h.t.Helper()
	cmd := proctest.Command(role, append([]string{path}, args...)...)
	cmd.Env = append(cmd.Env, env...)
	return h.Start(cmd)
}

// eventually waits at most limit for cond.
func (h *harness) eventually(limit time.Duration, what string, cond func() bool) {
	h.t.Helper()
	proctest.Eventually(h.t, limit, what, cond)
}

func (h *harness) load(off int) uint64 { return atomic.LoadUint64(h.word(off)) }

// waitHeld waits until a hold child holds the lock, and returns its pid.
func (h *harness) waitHeld() int {
	h.eventually(10*time.Second, "the holder never took the lock", func() bool { return h.load(offHeld) != 0 })
	return int(h.load(offHeld))
}

// exitedTID returns the owner value of the lock for an attachment that has
// exited since, holding nothing: in robust mode, a thread ID its process
// recorded in the table, and left there. (The next attachment retires it.)
func (h *harness) exitedTID(t *testing.T) uint32 { return h.goneTID(t, false) }

// goneTID is exitedTID for an attachment that closed the region before it
// exited, if closed: its thread ID is recorded nowhere any more.
func (h *harness) goneTID(t *testing.T, closed bool) uint32 {
	t.Helper()
	args := []string{}
	if closed {
		args = append(args, "close")
	}
	out := h.spawn("attach-tid", args...).Wait(t, 10*time.Second)
	v, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(out, "owner=")), 10, 32)
	require.NoError(t, err, out)
	return uint32(v)
}

// waitSleepers waits until someone waits on the lock (the waiters bit).
func (h *harness) waitSleepers() {
	h.eventually(10*time.Second, "no waiter went to sleep", func() bool { return h.mu.Inspect().Waiters })
}
