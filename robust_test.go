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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// Tests of robust mode: the kernel marks the locks of a dead process.

// openLocks opens the region at path (ModeAuto) and n locks on its first n
// lines.
func openLocks(path string, n int) (*shm.Region, []*shmlock.Mutex, error) {
	r, err := shm.Open(path, shm.Options{})
	if err != nil {
		return nil, nil, err
	}
	ms := make([]*shmlock.Mutex, n)
	for i := range ms {
		if ms[i], err = shmlock.New(r, i*shmlock.Size); err != nil {
			return nil, nil, err
		}
	}
	return r, ms, nil
}

// robustHold: args path, n[:i,j,...], how. Opens the first n locks and takes
// all of them, or those numbered i, j, ...; says so with the owner value they
// record, and on a line from stdin dies as told.
func robustHold(args []string) int {
	ns, which, some := strings.Cut(args[1], ":")
	n, _ := strconv.Atoi(ns)
	r, ms, err := openLocks(args[0], n)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if some {
		var held []*shmlock.Mutex
		for _, f := range strings.Split(which, ",") {
			i, _ := strconv.Atoi(f)
			held = append(held, ms[i])
		}
		ms = held
	}
	for _, m := range ms {
		m.Lock()
	}
	owner, _ := region.Of(r).OwnerFor(0)
	fmt.Printf("held owner=%d\n", owner)
	proctest.Die(args[2])
	return 0
}

// robustRegion creates a robust region of n lock lines for the test.
func robustRegion(t *testing.T, n int) (string, *shm.Region) {
	path := fmt.Sprintf("%s/shmlock-test-%d-%s", shm.Dir, os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	os.Remove(path)
	r, err := shm.Open(path, shm.Options{Size: n * shmlock.Size, Slots: 16, Mode: shm.ModeRobust})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close(); os.Remove(path) })
	return path, r
}

// lockWord returns the owner word of the lock at line i.
func lockWord(t *testing.T, r *shm.Region, i int) *uint64 {
	line, err := region.Of(r).Line(i * shmlock.Size)
	require.NoError(t, err)
	return &line[0]
}

// holder is a "robust-hold" child.
type holder struct {
	*proctest.Child
	stdin *os.File
	owner uint64
}

// startHolder starts a child that opens the first n locks of the region at
// path and holds them all (n may be "n:i,j" to hold locks i and j only),
// under the command wrap if any, and waits until it holds.
func startHolder[N int | string](t *testing.T, path string, n N, how string, wrap ...string) *holder {
	t.Helper()
	cmd := proctest.Command("robust-hold", path, fmt.Sprint(n), how)
	if len(wrap) > 0 {
		require.NoError(t, proctest.Via(cmd, wrap...))
	}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdin = r
	h := &holder{Child: proctest.New(t, 5*time.Minute).Start(cmd), stdin: w}
	r.Close()
	t.Cleanup(func() { w.Close() })
	proctest.Eventually(t, 10*time.Second, "the holder never held", func() bool {
		return strings.Contains(h.Output(), "held owner=")
	})
	v, err := strconv.ParseUint(strings.TrimSpace(strings.SplitN(h.Output(), "owner=", 2)[1]), 10, 32)
	require.NoError(t, err)
	h.owner = v
	return h
}

// slowProbes spaces this process's probes of a holder half a minute apart for
// the rest of the test: only the kernel can end a wait promptly.
func slowProbes(t *testing.T) {
	restore := shmlock.SetProbeSchedule(200*time.Microsecond, 30*time.Second, 30*time.Second)
	t.Cleanup(restore)
}

// Every kind of death while holding one lock or several: the kernel marks
// every word the process held (owner 0, ownerDied, waiters and generation
// kept) and wakes the waiter asleep on the first, which acquires at once,
// told. This process's probes are half a minute apart, so no probe did it.
func TestRobustEveryDeath(t *testing.T) {
	slowProbes(t)
	for _, how := range proctest.Deaths {
		for _, n := range []int{1, 3} {
			t.Run(fmt.Sprintf("%s/locks=%d", how, n), func(t *testing.T) {
				path, r := robustRegion(t, n)
				mu, err := shmlock.New(r, 0)
				require.NoError(t, err)
				hold := startHolder(t, path, n, how)
				words := make([]uint64, n)
				for i := range n {
					words[i] = atomic.LoadUint64(lockWord(t, r, i))
					require.Equal(t, hold.owner, words[i]&line.OwnerMask, "lock %d: held by the child's robust thread", i)
				}
				type result struct {
					recovered bool
					at        time.Time
					err       error
				}
				done := make(chan result, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					g, err := mu.Acquire(ctx)
					if err != nil {
						done <- result{err: err}
						return
					}
					at := time.Now()
					g.Release()
					done <- result{recovered: g.Recovered(), at: at}
				}()
				deadline := time.Now().Add(10 * time.Second)
				for atomic.LoadUint64(lockWord(t, r, 0))&line.Waiters == 0 {
					require.True(t, time.Now().Before(deadline), "the waiter never slept")
					time.Sleep(time.Millisecond)
				}
				time.Sleep(20 * time.Millisecond) // asleep in the futex
				died := time.Now()
				fmt.Fprintln(hold.stdin)
				if how == "sigkill" {
					syscall.Kill(hold.Pid(), syscall.SIGKILL)
				}
				select {
				case res := <-done:
					require.NoError(t, res.err)
					assert.True(t, res.recovered, "the waiter is told")
					t.Logf("death → acquired in %v", res.at.Sub(died))
					assert.Less(t, res.at.Sub(died), recoveryBound)
				case <-time.After(10 * time.Second):
					t.Fatalf("the waiter was not woken; word %#x; holder: %s", atomic.LoadUint64(lockWord(t, r, 0)), hold.Output())
				}
				for i := 1; i < n; i++ {
					assert.Equal(t, words[i]&^line.OwnerMask|line.OwnerDied, atomic.LoadUint64(lockWord(t, r, i)),
						"lock %d: marked by the kernel, nothing else changed", i)
				}
				if how == "exec" {
					assert.NoError(t, syscall.Kill(hold.Pid(), 0), "exec: the process lives on, as another program")
				}
				assert.EqualValues(t, 1, mu.Inspect().Recoveries)
			})
		}
	}
}

// More locks held than one robust list holds (the kernel walks 2048 entries
// of a list): every one is marked at the holder's death.
func TestRobustManyLocksHeld(t *testing.T) {
	const n = 2100
	path, r := robustRegion(t, n)
	hold := startHolder(t, path, n, "sigkill")
	tids := map[uint64]int{}
	for i := range n {
		tids[atomic.LoadUint64(lockWord(t, r, i))&line.OwnerMask]++
	}
	assert.Len(t, tids, 2, "two robust lists, two thread IDs")
	fmt.Fprintln(hold.stdin)
	hold.Kill()
	marked := 0
	for i := range n {
		if w := atomic.LoadUint64(lockWord(t, r, i)); w&line.OwnerMask == 0 && w&line.OwnerDied != 0 {
			marked++
		}
	}
	assert.Equal(t, n, marked, "locks the kernel marked")
}

// Three waiters, in three processes, sleep on one holder that dies. The
// kernel wakes one; each that acquires after sleeping keeps the waiters bit,
// so its release wakes the next: all three acquire within the bound, though
// their probes are half a minute apart, and exactly one is told.
func TestRobustThreeWaiters(t *testing.T) {
	h := newModeHarness(t, 60*time.Second, shm.ModeRobust)
	holder := h.spawn("hold")
	h.waitHeld()
	var ws []*child
	for range 3 {
		ws = append(ws, h.spawnIn(h.path, []string{slowProbesEnv + "=1"}, "wait"))
	}
	h.waitSleepers()
	time.Sleep(100 * time.Millisecond) // all three asleep
	killed := time.Now()
	holder.Kill()
	recovered := 0
	for _, w := range ws {
		out := w.Wait(t, recoveryBound)
		if strings.Contains(out, "recovered=true") {
			recovered++
		} else {
			assert.Contains(t, out, "recovered=false")
		}
	}
	t.Logf("all three acquired within %v of the kill", time.Since(killed))
	assert.Equal(t, 1, recovered, "exactly one waiter sees the death")
	assert.EqualValues(t, 1, h.mu.Inspect().Recoveries)
	assert.Zero(t, h.load(offViolation), "two holders at once")
}

// A holder in another PID namespace (unshare --pid), with a thread ID that
// means nothing here, dies: the kernel, which compares the word with the
// dying thread's ID in its own namespace, marks it, and the waiter here
// acquires, told. And the other way round: a waiter in a namespace of its
// own recovers from a holder here.
func TestRobustAcrossPIDNamespaces(t *testing.T) {
	unshare := unshareOrSkip(t)
	slowProbes(t)
	t.Run("holder inside", func(t *testing.T) {
		path, r := robustRegion(t, 1)
		mu, err := shmlock.New(r, 0)
		require.NoError(t, err)
		hold := startHolder(t, path, 1, "sigkill", unshare, "--pid", "--fork", "--mount-proc", "--kill-child")
		snap := mu.Inspect()
		require.True(t, snap.Held)
		assert.EqualValues(t, 1, snap.Holder.PID, "pid 1 of its namespace: "+snap.Holder.String())
		assert.Equal(t, shm.Alive, snap.Holder.State, snap.Holder.String())
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			g, err := mu.Acquire(ctx)
			if err == nil {
				if !g.Recovered() {
					err = fmt.Errorf("not told")
				}
				g.Release()
			}
			done <- err
		}()
		time.Sleep(50 * time.Millisecond)
		killed := time.Now()
		hold.Kill() // --kill-child takes the holder down
		select {
		case err := <-done:
			require.NoError(t, err)
			t.Logf("kill → acquired in %v", time.Since(killed))
		case <-time.After(10 * time.Second):
			t.Fatalf("not recovered; word %#x", atomic.LoadUint64(lockWord(t, r, 0)))
		}
	})
	t.Run("waiter inside", func(t *testing.T) {
		h := newModeHarness(t, 60*time.Second, shm.ModeRobust)
		holder := h.spawn("hold")
		h.waitHeld()
		cmd := proctest.Command("wait", h.path)
		cmd.Env = append(cmd.Env, slowProbesEnv+"=1")
		require.NoError(t, proctest.Via(cmd, unshare, "--pid", "--fork", "--mount-proc", "--kill-child"))
		waiter := h.Start(cmd)
		h.waitSleepers()
		holder.Kill()
		select {
		case <-waiter.Done():
			require.NoError(t, waiter.Err, waiter.Output())
		case <-time.After(recoveryBound):
			t.Fatalf("the waiter in the other namespace did not recover: %s", waiter.Output())
		}
		assert.Contains(t, waiter.Output(), "recovered=true")
	})
}

// Two holders in two PID namespaces of their own, which number their threads
// alike: the region gives them distinct thread IDs, so that when one dies
// the kernel, walking its list (which links both locks), marks its own lock
// and leaves the other's alone. Were the IDs equal, the live holder would be
// robbed.
func TestRobustNamespacesDoNotShareTIDs(t *testing.T) {
	unshare := unshareOrSkip(t)
	// A fresh namespace numbers the first robust thread 3 or 4: two
	// holders collide about one time in three unless the region steps in,
	// so several rounds.
	for round := range 6 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			path, r := robustRegion(t, 2)
			ns := []string{unshare, "--pid", "--fork", "--mount-proc", "--kill-child"}
			// a holds lock 0 and b lock 1; both opened both, so each
			// one's list links both locks.
			a := startHolder(t, path, "2:0", "sigkill", ns...)
			b := startHolder(t, path, "2:1", "sigkill", ns...)
			t.Logf("thread IDs: %d and %d (each in its own namespace)", a.owner, b.owner)
			assert.NotEqual(t, a.owner, b.owner, "two live attachments share a thread ID")
			w1 := atomic.LoadUint64(lockWord(t, r, 1))
			require.Equal(t, b.owner, w1&line.OwnerMask)

			a.Kill()
			deadline := time.Now().Add(5 * time.Second)
			for atomic.LoadUint64(lockWord(t, r, 0))&line.OwnerMask != 0 {
				require.True(t, time.Now().Before(deadline), "the dead holder's lock was not marked")
				time.Sleep(time.Millisecond)
			}
			assert.Equal(t, w1, atomic.LoadUint64(lockWord(t, r, 1)), "the live holder's lock was touched")
		})
	}
}

func unshareOrSkip(t *testing.T) string {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) not installed")
	}
	if out, err := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here (needs root): %v %s", err, out)
	}
	return unshare
}

// The probe stays behind the kernel, and reads robust words: a word naming
// the thread of an attachment that has exited (a word the kernel did not
// mark) is recovered, told; a word naming a live holder's thread is not, and
// the error names the holder; a thread ID nobody records is a dead owner.
func TestRobustProbeSafetyNet(t *testing.T) {
	h := newModeHarness(t, 60*time.Second, shm.ModeRobust)
	rec := recordKills(t)
	h.setOwner(9<<32 | uint64(h.exitedTID(t)))
	got, err := h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, got, "a stuck word of an exited attachment (its slot records the thread; its liveness lock is free) is recovered, and told")
	h.setOwner(10<<32 | uint64(h.goneTID(t, true)))
	got, err = h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, got, "a stuck word naming a thread no slot records any more is recovered, and told")

	holder := h.spawn("hold")
	pid := h.waitHeld()
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	_, err = h.acquire(300 * time.Millisecond)
	var he *shmlock.HeldError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, shm.Alive, he.Holder.State)
	assert.EqualValues(t, pid, he.Holder.PID, "the thread ID leads to the holder's pid")
	assert.NotZero(t, he.Holder.TID)
	assert.Contains(t, err.Error(), "stopped")
	t.Log(err)
	holder.Kill()
	got, err = h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, got)

	h.setOwner(3<<32 | 4_100_000) // above any pid_max: nobody's thread
	got, err = h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, got, "a thread ID no attachment records is a dead owner")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.NotEmpty(t, rec.kills, "the probe asked the kernel about the live holder")
}

// robustChurn: args path, locks, goroutines. Lock and unlock the locks in
// tight loops, from several goroutines, until killed; the first line says
// the loops run.
func robustChurn(args []string) int {
	n, _ := strconv.Atoi(args[1])
	g, _ := strconv.Atoi(args[2])
	_, ms, err := openLocks(args[0], n)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	var started atomic.Int32
	for i := range g {
		go func() {
			started.Add(1)
			for k := i; ; k++ {
				m := ms[k%n]
				m.Lock()
				m.Unlock()
			}
		}()
	}
	for started.Load() < int32(g) {
		time.Sleep(10 * time.Microsecond)
	}
	fmt.Println("churning")
	select {}
}

// robustKills is the number of kills TestRobustRandomKills makes; set
// SHMLOCK_ROBUST_KILLS for a longer run.
func robustKills() int {
	if n, err := strconv.Atoi(os.Getenv("SHMLOCK_ROBUST_KILLS")); err == nil && n > 0 {
		return n
	}
	if testing.Short() {
		return 50
	}
	return 300
}

// Processes locking and unlocking in tight loops, from several goroutines on
// several locks, are SIGKILLed at random moments: after each death, no lock
// word may still name the dead process's thread. Every lock it held at the
// moment of death must have been marked by the kernel. Counts are logged:
// kills, locks held at death (marked), words left stuck (must be 0).
func TestRobustRandomKills(t *testing.T) {
	const locks, goroutines = 4, 4
	path, r := robustRegion(t, locks)
	kills, marked, stuck := robustKills(), 0, 0
	h := proctest.New(t, 5*time.Minute)
	for k := range kills {
		c := h.Spawn("robust-churn", path, strconv.Itoa(locks), strconv.Itoa(goroutines))
		proctest.Eventually(t, 10*time.Second, "the churner never started", func() bool {
			return strings.Contains(c.Output(), "churning")
		})
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		c.Kill()
		for i := range locks {
			p := lockWord(t, r, i)
			w := atomic.LoadUint64(p)
			switch {
			case w&line.OwnerMask != 0:
				stuck++
				t.Errorf("kill %d: lock %d stuck with a dead thread: word %#x", k, i, w)
			case w&line.OwnerDied != 0:
				marked++
			}
			atomic.StoreUint64(p, w&^(line.OwnerDied|line.Waiters)) // free again, for the next round
		}
	}
	t.Logf("%d kills; %d locks held at the moment of death, all marked by the kernel; %d words left stuck", kills, marked, stuck)
	assert.Positive(t, marked, "no kill landed while a lock was held: the test proved nothing")
}
