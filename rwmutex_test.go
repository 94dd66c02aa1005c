//go:build linux

package shmlock_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// The RW test region: an RWMutex, then words.
const (
	rwSlots   = 64
	rwA       = 0  // a writer adds one to a, then, after a while, to b
	rwB       = 1  // so a reader beside a writer sees a != b
	rwJournal = 2  // worker index + 1 while a write is in flight
	rwStop    = 3  // nonzero: workers stop
	rwBad     = 4  // a reader saw a != b without being told; or two writers at once
	rwInside  = 5  // pid of the writer inside, 0 if none
	rwHeld    = 6  // pid of a hold child once it holds
	rwTold    = 7  // reads told of a dead writer
	rwMine    = 16 // per-worker committed writes
	rwWords   = rwMine + maxWorkers
)

type rwEnv struct {
	r  *shm.Region
	rw *shmlock.RWMutex
	w  []uint64
}

func rwLayout() (*shm.Layout, int, int) {
	var l shm.Layout
	lock := l.Lock("rw", shmlock.RWMutexSize(rwSlots))
	data := l.Data("words", 8*rwWords)
	return &l, lock, data
}

func openRW(path string, mode shm.Mode) (*rwEnv, error) {
	l, lock, data := rwLayout()
	r, err := shm.Open(path, shm.Options{Layout: l, Slots: rwSlots, Mode: mode})
	if err != nil {
		return nil, err
	}
	rw, err := shmlock.NewRWMutex(r, lock)
	if err != nil {
		r.Close()
		return nil, err
	}
	b, err := r.Bytes(data, 8*rwWords)
	if err != nil {
		r.Close()
		return nil, err
	}
	return &rwEnv{r: r, rw: rw, w: unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), rwWords)}, nil
}

// rwRole makes f a child's role on the RW test region at args[0].
func rwRole(f func(e *rwEnv, args []string) int) func(args []string) int {
	return func(args []string) int {
		e, err := openRW(args[0], shm.ModeAuto)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		return f(e, args)
	}
}

func (e *rwEnv) load(i int) uint64 { return atomic.LoadUint64(&e.w[i]) }

func init() {
	roles["rw-read-hold"] = rwRole(rwReadHold)
	roles["rw-write-hold"] = rwRole(rwWriteHold)
	roles["rw-worker"] = rwRole(rwWorker)
	roles["rw-close-draining"] = rwRole(rwCloseDraining)
	roles["rw-told-writer"] = rwRole(rwToldWriter)
	roles["rw-told-reader"] = rwRole(rwToldReader)
	roles["rw-close-during-spin"] = rwRole(rwCloseDuringSpin)
	roles["rw-read-then-close"] = rwRole(rwReadThenClose)
	roles["rw-tryrlock-poller"] = rwRole(rwTryRLockPoller)
}

// rwReadHold takes a read share of the RWMutex at args[0] and holds it until
// killed; with args[1] "twice", two shares, from two goroutines.
func rwReadHold(e *rwEnv, args []string) int {
	e.rw.RLock()
	if len(args) > 1 && args[1] == "twice" {
		done := make(chan struct{})
		go func() { e.rw.RLock(); close(done) }()
		<-done
	}
	atomic.StoreUint64(&e.w[rwHeld], uint64(os.Getpid()))
	select {}
}

// rwWriteHold takes the write lock, half writes (a, not b), and holds it
// until killed.
func rwWriteHold(e *rwEnv, args []string) int {
	e.rw.Lock()
	atomic.AddUint64(&e.w[rwA], 1)
	atomic.StoreUint64(&e.w[rwHeld], uint64(os.Getpid()))
	select {}
}

// write is one write of worker i: a and b go up by one, with a journal that
// lets the next writer finish the write of a worker killed in the middle.
func (e *rwEnv) write(ctx context.Context, i int) error {
	g, err := e.rw.Acquire(ctx)
	if err != nil {
		return err
	}
	defer g.Release()
	if !atomic.CompareAndSwapUint64(&e.w[rwInside], 0, uint64(os.Getpid())) && !g.Recovered() {
		atomic.AddUint64(&e.w[rwBad], 1)
	}
	atomic.StoreUint64(&e.w[rwInside], uint64(os.Getpid()))
	if g.Recovered() {
		e.repair()
	}
	atomic.StoreUint64(&e.w[rwJournal], uint64(i+1))
	atomic.AddUint64(&e.w[rwA], 1)
	for t := time.Now(); time.Since(t) < 20*time.Microsecond; {
	}
	atomic.AddUint64(&e.w[rwB], 1)
	atomic.AddUint64(&e.w[rwMine+i], 1)
	atomic.StoreUint64(&e.w[rwJournal], 0)
	if !atomic.CompareAndSwapUint64(&e.w[rwInside], uint64(os.Getpid()), 0) {
		atomic.AddUint64(&e.w[rwBad], 1)
	}
	g.Commit()
	return nil
}

// repair finishes the write of a writer that died: b catches up with a, and
// the dead worker's count with the writes it made.
func (e *rwEnv) repair() {
	a := e.load(rwA)
	atomic.StoreUint64(&e.w[rwB], a)
	if j := e.load(rwJournal); j != 0 && a == e.sumMine()+1 {
		atomic.AddUint64(&e.w[rwMine+int(j-1)], 1)
	}
	atomic.StoreUint64(&e.w[rwJournal], 0)
}

func (e *rwEnv) sumMine() uint64 {
	var s uint64
	for i := range maxWorkers {
		s += e.load(rwMine + i)
	}
	return s
}

// read is one read: a and b must be equal, twice over a while, unless the
// reader was told of a dead writer whose write nobody repaired yet.
func (e *rwEnv) read(ctx context.Context) error {
	g, err := e.rw.RAcquire(ctx)
	if err != nil {
		return err
	}
	defer g.Release()
	a1, b1 := e.load(rwA), e.load(rwB)
	for t := time.Now(); time.Since(t) < 5*time.Microsecond; {
	}
	a2, b2 := e.load(rwA), e.load(rwB)
	if g.Recovered() {
		atomic.AddUint64(&e.w[rwTold], 1)
	} else if a1 != b1 || a2 != b2 || a1 != a2 {
		atomic.AddUint64(&e.w[rwBad], 1)
	}
	g.Commit()
	return nil
}

// rwWorker is worker args[1] on the RWMutex at args[0]: until stopped, one
// write in args[2] operations, the others reads.
func rwWorker(e *rwEnv, args []string) int {
	i, _ := strconv.Atoi(args[1])
	every, _ := strconv.Atoi(args[2])
	ctx := context.Background()
	for n := 0; e.load(rwStop) == 0; n++ {
		var err error
		if n%every == i%every {
			err = e.write(ctx, i)
		} else {
			err = e.read(ctx)
		}
		if err != nil {
			fmt.Println(err)
			return 1
		}
	}
	return 0
}

type rwHarness struct {
	*proctest.Harness
	t    *testing.T
	path string
	*rwEnv
}

func newRWHarness(t *testing.T, limit time.Duration, mode shm.Mode) *rwHarness {
	path := fmt.Sprintf("%s/shmlock-test-%d-%s", shm.Dir, os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	os.Remove(path)
	e, err := openRW(path, mode)
	require.NoError(t, err)
	t.Cleanup(func() { e.r.Close(); os.Remove(path) })
	return &rwHarness{Harness: proctest.New(t, limit), t: t, path: path, rwEnv: e}
}

func (h *rwHarness) spawn(role string, args ...string) *child {
	return h.Start(proctest.Command(role, append([]string{h.path}, args...)...))
}

func (h *rwHarness) waitHeld() int {
	proctest.Eventually(h.t, 10*time.Second, "the holder never took the lock", func() bool { return h.load(rwHeld) != 0 })
	return int(h.load(rwHeld))
}

// In one process: readers share, a writer excludes readers and writers, the
// Try forms never wait, and an RUnlock without a share panics with
// ErrNotHeld.
func TestRWMutexInProcess(t *testing.T) {
	h := newRWHarness(t, 30*time.Second, shm.ModeAuto)
	rw := h.rw
	rw.RLock()
	rw.RLock() // a second share, of the same process
	require.True(t, rw.TryRLock())
	assert.False(t, rw.TryLock(), "a writer beside readers")
	st := rw.Inspect()
	require.Len(t, st.Readers, 1)
	assert.EqualValues(t, 3, st.Readers[0].Shares)
	assert.True(t, st.Readers[0].Holder.Self)

	locked := make(chan struct{})
	go func() { rw.Lock(); close(locked) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-locked:
		t.Fatal("Lock did not wait for the readers")
	default:
	}
	rw.RUnlock()
	rw.RUnlock()
	rw.RLocker().Unlock()
	<-locked
	assert.False(t, rw.TryRLock(), "a reader beside a writer")
	assert.False(t, rw.TryLock(), "two writers")

	read := make(chan struct{})
	go func() { rw.RLock(); close(read) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-read:
		t.Fatal("RLock did not wait for the writer")
	default:
	}
	rw.Unlock()
	<-read
	rw.RUnlock()

	assert.Empty(t, rw.Inspect().Readers)
	v := recover2(rw.RUnlock)
	require.Error(t, v)
	assert.ErrorIs(t, v, shmlock.ErrNotHeld)
	require.True(t, rw.TryRLock(), "the failed RUnlock left its count wrong")
	rw.RUnlock()
	require.True(t, rw.TryLock())
	rw.Unlock()
}

// recover2 runs f and returns the error it panicked with.
func recover2(f func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err, _ = v.(error)
		}
	}()
	f()
	return nil
}

// Many goroutines of two processes read and write: never a writer beside a
// reader or another writer, and the counts are exact.
func TestRWMutexGoroutines(t *testing.T) {
	h := newRWHarness(t, 60*time.Second, shm.ModeAuto)
	other := h.spawn("rw-worker", "1", "10")
	var wg sync.WaitGroup
	stop := time.Now().Add(time.Second)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for n := 0; time.Now().Before(stop); n++ {
				if n%10 == g {
					require.NoError(t, h.write(ctx, 0))
				} else {
					require.NoError(t, h.read(ctx))
				}
			}
		}()
	}
	wg.Wait()
	atomic.StoreUint64(&h.w[rwStop], 1)
	other.Wait(t, 10*time.Second)
	require.NoError(t, other.Err, other.Output())
	assert.Zero(t, h.load(rwBad), "a reader beside a writer, or two writers")
	assert.Equal(t, h.load(rwA), h.load(rwB))
	assert.Equal(t, h.load(rwA), h.sumMine())
	t.Logf("%d writes", h.load(rwA))
}

// A reader that is SIGKILLed holding shares does not wedge writers: the
// writer waiting for them frees them on evidence of its death, promptly.
// Alive (stopped, even), it is never robbed: a timed Acquire names it.
func TestRWDeadReaderFreed(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newRWHarness(t, 60*time.Second, mode)
		reader := h.spawn("rw-read-hold", "twice")
		pid := h.waitHeld()
		require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := h.rw.Acquire(ctx)
		cancel()
		var he *shmlock.HeldError
		require.ErrorAs(t, err, &he)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.True(t, he.Reader)
		assert.EqualValues(t, pid, he.Holder.PID)
		assert.Equal(t, shm.Alive, he.Holder.State)
		assert.Equal(t, byte('T'), he.Holder.ProcState)
		assert.EqualValues(t, 2, uint32(he.Owner), "the reader word counts its two shares")
		assert.True(t, h.rw.TryRLock(), "a failed Acquire left the writers' lock held")
		h.rw.RUnlock()

		got := make(chan time.Time, 1)
		go func() {
			g, err := h.rw.Acquire(context.Background())
			if assert.NoError(t, err) {
				assert.False(t, g.Recovered(), "a reader's death is not a writer's")
				g.Commit()
				g.Release()
			}
			got <- time.Now()
		}()
		time.Sleep(50 * time.Millisecond) // the writer waits on the reader line
		killed := time.Now()
		reader.Kill()
		select {
		case at := <-got:
			t.Logf("the writer acquired %v after the reader's death", at.Sub(killed))
		case <-time.After(10 * time.Second):
			t.Fatal("the writer never acquired: the dead reader's shares wedge it")
		}
		assert.EqualValues(t, 1, h.rw.Inspect().ReadersFreed)
		assert.Empty(t, h.rw.Inspect().Readers)
	})
}

// A writer that is SIGKILLed mid-write is taken over: a reader is told (the
// data may be half written, and no writer has repaired it), and so is the
// next writer, once; the reader does not consume the writer's news.
func TestRWDeadWriterTold(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newRWHarness(t, 60*time.Second, mode)
		writer := h.spawn("rw-write-hold")
		h.waitHeld()
		writer.Kill()
		g, err := h.rw.RAcquire(context.Background())
		require.NoError(t, err)
		assert.True(t, g.Recovered(), "the reader after a dead writer was not told")
		g.Release()
		g, err = h.rw.RAcquire(context.Background())
		require.NoError(t, err)
		assert.True(t, g.Recovered(), "a reader consumed the writer's news")
		g.Release()
		g, err = h.rw.Acquire(context.Background())
		require.NoError(t, err)
		assert.True(t, g.Recovered(), "the writer after a dead writer was not told")
		h.repair()
		g.Commit()
		g.Release()
		g, err = h.rw.RAcquire(context.Background())
		require.NoError(t, err)
		assert.False(t, g.Recovered(), "told after a writer repaired")
		g.Release()
		g, err = h.rw.Acquire(context.Background())
		require.NoError(t, err)
		assert.False(t, g.Recovered(), "told twice")
		g.Commit()
		g.Release()
		assert.EqualValues(t, 1, h.rw.Inspect().Writer.Recoveries)
	})
}

// A reader in another PID namespace: alive, it is not robbed; killed, its
// shares are freed.
func TestRWReaderInAnotherPIDNamespace(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) not installed")
	}
	if out, err := exec.Command(unshare, "--pid", "--fork", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here (needs root): %v %s", err, out)
	}
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newRWHarness(t, 60*time.Second, mode)
		cmd := proctest.Command("rw-read-hold", h.path)
		require.NoError(t, proctest.Via(cmd, unshare, "--pid", "--fork", "--mount-proc", "--kill-child"))
		reader := h.Start(cmd)
		h.waitHeld()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := h.rw.Acquire(ctx)
		cancel()
		var he *shmlock.HeldError
		require.ErrorAs(t, err, &he, reader.Output())
		assert.NotEqual(t, shm.Dead, he.Holder.State)
		reader.Kill()
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g, err := h.rw.Acquire(ctx)
		require.NoError(t, err, "the shares of a dead reader in another PID namespace were not freed")
		g.Commit()
		g.Release()
	})
}

// Readers and writers SIGKILLed at random: never a writer beside a reader or
// another writer among the living, exact counts, and nobody wedged. It runs
// 4 s in each mode; SHMLOCK_RW_KILLS_FOR=2m runs it longer.
func TestRWNoViolationUnderKills(t *testing.T) {
	run := 4 * time.Second
	if d, err := time.ParseDuration(os.Getenv("SHMLOCK_RW_KILLS_FOR")); err == nil {
		run = d
	}
	inModes(t, func(t *testing.T, mode shm.Mode) {
		const workers, every = 6, 8
		h := newRWHarness(t, run+90*time.Second, mode)
		cs := make([]*child, workers)
		for i := range cs {
			cs[i] = h.spawn("rw-worker", strconv.Itoa(i), strconv.Itoa(every))
		}
		kills := 0
		for end := time.Now().Add(run); time.Now().Before(end); kills++ {
			time.Sleep(time.Duration(10+rand.IntN(40)) * time.Millisecond)
			i := rand.IntN(workers)
			cs[i].Kill()
			cs[i] = h.spawn("rw-worker", strconv.Itoa(i), strconv.Itoa(every))
		}
		atomic.StoreUint64(&h.w[rwStop], 1)
		for _, c := range cs {
			c.Wait(t, 20*time.Second)
			require.NoError(t, c.Err, "a survivor failed or wedged: %s", c.Output())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g, err := h.rw.Acquire(ctx)
		require.NoError(t, err, "wedged after the kills")
		if g.Recovered() {
			h.repair()
		}
		g.Commit()
		g.Release()
		st := h.rw.Inspect()
		t.Logf("%d kills: %d writes, %d reads told of a dead writer, %d writer recoveries, %d readers freed",
			kills, h.load(rwA), h.load(rwTold), st.Writer.Recoveries, st.ReadersFreed)
		assert.Zero(t, h.load(rwBad), "a reader beside a writer, or two writers")
		assert.Equal(t, h.load(rwA), h.load(rwB), "a write left half done")
		assert.Equal(t, h.load(rwA), h.sumMine(), "writes lost or doubled")
		assert.NotZero(t, st.ReadersFreed, "no reader died holding a share: the test proved nothing")
	})
}

// Use after Close: an error or a panic matching shm.ErrClosed, never a fault.
func TestRWUseAfterClose(t *testing.T) {
	e, err := openRW(fmt.Sprintf("%s/shmlock-test-%d-rwclose", shm.Dir, os.Getpid()), shm.ModeAuto)
	require.NoError(t, err)
	defer os.Remove(e.r.Path())
	rw := e.rw
	rw.RLock()
	require.NoError(t, e.r.Close())
	for name, f := range map[string]func(){
		"RLock": rw.RLock, "RUnlock": rw.RUnlock, "Lock": rw.Lock, "Unlock": rw.Unlock,
		"TryRLock": func() { rw.TryRLock() }, "TryLock": func() { rw.TryLock() },
	} {
		err := recover2(f)
		assert.ErrorIs(t, err, shm.ErrClosed, name)
	}
	_, err = rw.Acquire(context.Background())
	assert.ErrorIs(t, err, shm.ErrClosed)
	_, err = rw.RAcquire(context.Background())
	assert.ErrorIs(t, err, shm.ErrClosed)
	assert.True(t, errors.Is(rw.BreakReader(1), shm.ErrClosed))
}

// rwCloseDraining: a goroutine waits for the write lock (args[1]: "lock" or
// "acquire") behind the parent's read share, and the region is closed under
// it: it returns, or panics, with shm.ErrClosed; the process lives on.
func rwCloseDraining(e *rwEnv, args []string) int {
	res := make(chan error, 1)
	go func() {
		if args[1] == "lock" {
			res <- recover2(e.rw.Lock)
			return
		}
		_, err := e.rw.Acquire(context.Background())
		res <- err
	}()
	time.Sleep(150 * time.Millisecond) // the writer sleeps on the parent's line
	if err := e.r.Close(); err != nil {
		fmt.Println("close:", err)
		return 1
	}
	select {
	case err := <-res:
		fmt.Printf("closed=%v: %v\n", errors.Is(err, shm.ErrClosed), err)
	case <-time.After(time.Second):
		fmt.Println("the writer still waits a second after Close")
	}
	return 0
}

// A writer asleep, waiting for readers, when its region is closed: Close
// wakes it, and it reports the close, instead of a fault on unmapped memory
// that would end the process.
func TestRWCloseWhileDraining(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		for _, how := range []string{"acquire", "lock"} {
			t.Run(how, func(t *testing.T) {
				h := newRWHarness(t, 30*time.Second, mode)
				h.rw.RLock()
				defer h.rw.RUnlock()
				c := h.spawn("rw-close-draining", how)
				out := c.Wait(t, 10*time.Second)
				require.NoError(t, c.Err, "the process died: %s", out)
				assert.Contains(t, out, "closed=true")
			})
		}
	})
}

// rwToldWriter, until stopped: Acquire; if told, repair (the journal word
// back to 0); then leave what a writer that died mid-write and was taken
// over by a Lock leaves (the journal at 1, the news untold); release.
func rwToldWriter(e *rwEnv, args []string) int {
	_, lock, _ := rwLayout()
	l, _ := region.Of(e.r).Line(lock)
	for e.load(rwStop) == 0 {
		g, err := e.rw.Acquire(context.Background())
		if err != nil {
			fmt.Println(err)
			return 1
		}
		if g.Recovered() {
			atomic.StoreUint64(&e.w[rwJournal], 0)
		}
		atomic.StoreUint64(&e.w[rwJournal], 1)
		atomic.OrUint64(&l[line.Recoveries], line.Untold)
		g.Commit()
		g.Release()
	}
	return 0
}

// rwToldReader, until stopped: RAcquire, and count the reads that find the
// journal at 1 without being told.
func rwToldReader(e *rwEnv, args []string) int {
	for e.load(rwStop) == 0 {
		for range 4096 {
			g, _ := e.rw.RAcquire(context.Background())
			if e.load(rwJournal) == 1 && !g.Recovered() {
				atomic.AddUint64(&e.w[rwBad], 1)
			}
			g.Release()
		}
		atomic.AddUint64(&e.w[rwTold], 4096)
	}
	return 0
}

// A reader is told of a writer's death until a writer has repaired: a
// writer that takes the lock between the reader's look at the writers' word
// and its look at the news, and is told, must not leave the reader untold.
// Both processes share one CPU, so that the kernel preempts the reader
// between its loads.
func TestRWReaderToldUntilRepaired(t *testing.T) {
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		t.Skip("taskset (util-linux) not installed")
	}
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h := newRWHarness(t, 60*time.Second, mode)
		_, lock, _ := rwLayout()
		l, _ := region.Of(h.r).Line(lock)
		atomic.StoreUint64(&h.w[rwJournal], 1)
		atomic.OrUint64(&l[line.Recoveries], line.Untold)
		var cs []*child
		for _, role := range []string{"rw-told-writer", "rw-told-reader"} {
			cmd := proctest.Command(role, h.path)
			cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
			require.NoError(t, proctest.Via(cmd, taskset, "-c", "1"))
			cs = append(cs, h.Start(cmd))
		}
		time.Sleep(3 * time.Second)
		atomic.StoreUint64(&h.w[rwStop], 1)
		for _, c := range cs {
			c.Wait(t, 10*time.Second)
			require.NoError(t, c.Err, c.Output())
		}
		t.Logf("%d reads; %d read unrepaired data untold", h.load(rwTold), h.load(rwBad))
		assert.Zero(t, h.load(rwBad), "a reader read unrepaired data without being told")
	})
}

// BreakReader of a reader that is in fact alive costs the shares it held
// then, not exclusion for good: the line keeps its owner ID, so the reader's
// later shares still hold writers off.
func TestRWBreakReaderKeepsTheLine(t *testing.T) {
	h := newRWHarness(t, 30*time.Second, shm.ModeProbe)
	l, lock, _ := rwLayout()
	r2, err := shm.Open(h.path, shm.Options{Layout: l, Slots: rwSlots})
	require.NoError(t, err)
	defer r2.Close()
	admin, err := shmlock.NewRWMutex(r2, lock)
	require.NoError(t, err)
	h.rw.RLock()
	st := admin.Inspect()
	require.Len(t, st.Readers, 1)
	require.NoError(t, admin.BreakReader(st.Readers[0].Word)) // a mistaken break
	assert.ErrorIs(t, recover2(h.rw.RUnlock), shmlock.ErrNotHeld, "the broken share is gone")
	h.rw.RLock()
	defer h.rw.RUnlock()
	ok := admin.TryLock()
	if ok {
		admin.Unlock()
	}
	assert.False(t, ok, "a writer took the lock beside a live reader broken before")
}

// A process that holds 2^31-1 shares cannot take another: the RLock panics
// with shm.ErrLimit and takes nothing, long before the count could wrap to
// none and let a writer in.
func TestRWSharesLimit(t *testing.T) {
	h := newRWHarness(t, 30*time.Second, shm.ModeAuto)
	atomic.StoreUint32(shmlock.Shares(h.rw), 1<<31-1)
	err := recover2(h.rw.RLock)
	assert.ErrorIs(t, err, shm.ErrLimit)
	assert.EqualValues(t, 1<<31-1, atomic.LoadUint32(shmlock.Shares(h.rw)), "the refused share was kept")
	assert.False(t, h.rw.TryLock(), "a writer beside 2^31-1 shares")
	atomic.StoreUint32(shmlock.Shares(h.rw), 0)
}

// rwCloseDuringSpin: a goroutine Locks behind the parent's read share, and
// the region is closed args[1] µs after it holds the writers' lock, while
// its drain spins on the parent's line, or sleeps.
func rwCloseDuringSpin(e *rwEnv, args []string) int {
	us, _ := strconv.Atoi(args[1])
	_, lock, _ := rwLayout()
	l, _ := region.Of(e.r).Line(lock)
	res := make(chan error, 1)
	go func() { res <- recover2(e.rw.Lock) }()
	for atomic.LoadUint64(&l[line.Owner])&line.OwnerMask == 0 {
	}
	for t0 := time.Now(); time.Since(t0) < time.Duration(us)*time.Microsecond; {
	}
	if err := e.r.Close(); err != nil {
		fmt.Println("close:", err)
		return 1
	}
	select {
	case err := <-res:
		fmt.Printf("closed=%v: %v\n", errors.Is(err, shm.ErrClosed), err)
	case <-time.After(time.Second):
		fmt.Println("the writer still waits a second after Close")
	}
	return 0
}

// Close while a writer's drain spins on a reader's line, before it would
// sleep: Close waits for it, and it reports the close; the process lives.
// (The race detector cannot see the order that the child's atomic load of
// the writers' word sets up, through shared memory, between the writer's
// first steps and Close: the test is for faults, and runs without it.)
func TestRWCloseDuringDrainSpin(t *testing.T) {
	if raceBuild {
		t.Skip("orders through shared memory that the race detector does not see")
	}
	h := newRWHarness(t, 90*time.Second, shm.ModeProbe)
	l, lock, _ := rwLayout()
	r2, err := shm.Open(h.path, shm.Options{Layout: l, Slots: rwSlots})
	require.NoError(t, err)
	defer r2.Close()
	reader, err := shmlock.NewRWMutex(r2, lock)
	require.NoError(t, err)
	died := 0
	for i := range 50 {
		g, err := h.rw.Acquire(context.Background()) // take over the last child's hold
		require.NoError(t, err)
		g.Release()
		reader.RLock()
		c := h.spawn("rw-close-during-spin", strconv.Itoa((i%10)*8))
		out := c.Wait(t, 10*time.Second)
		reader.RUnlock()
		if c.Err != nil {
			if died++; died == 1 {
				t.Logf("a child died: %.1500s", out)
			}
		}
	}
	assert.Zero(t, died, "Close crashed processes whose writer was draining")
}

// rwReadThenClose takes a share, says so, waits for the parent's word
// rwJournal, and closes its region without RUnlock; the process lives on.
func rwReadThenClose(e *rwEnv, args []string) int {
	e.rw.RLock()
	w := e.w
	atomic.StoreUint64(&w[rwHeld], 1)
	for atomic.LoadUint64(&w[rwJournal]) == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	e.r.Close()
	select {}
}

// A reader that closes its region holding a share ends its shares with its
// attachment, and a writer asleep on them is woken at once, not by its
// timer.
func TestRWReaderCloseWakesWriter(t *testing.T) {
	h := newRWHarness(t, 60*time.Second, shm.ModeProbe)
	for range 8 {
		atomic.StoreUint64(&h.w[rwHeld], 0)
		atomic.StoreUint64(&h.w[rwJournal], 0)
		c := h.spawn("rw-read-then-close")
		proctest.Eventually(t, 10*time.Second, "the reader never read", func() bool { return h.load(rwHeld) != 0 })
		got := make(chan time.Time, 1)
		go func() { h.rw.Lock(); got <- time.Now() }()
		time.Sleep(5 * time.Millisecond) // the writer sleeps on the drain events
		closed := time.Now()
		atomic.StoreUint64(&h.w[rwJournal], 1)
		at := <-got
		h.rw.Unlock()
		c.Kill()
		assert.Less(t, at.Sub(closed), 5*time.Millisecond, "the writer waited for its timer")
	}
}

// rwTryRLockPoller polls TryRLock until stopped; each poll fails while a
// writer holds the writers' word.
func rwTryRLockPoller(e *rwEnv, args []string) int {
	for e.load(rwStop) == 0 {
		for range 1024 {
			if e.rw.TryRLock() {
				e.rw.RUnlock()
			}
		}
	}
	return 0
}

// A writer that waits for a live reader sleeps through the shares that
// other processes take and drop: a process polling TryRLock meanwhile does
// not keep it awake.
func TestRWPollerDoesNotWakeWriter(t *testing.T) {
	h := newRWHarness(t, 60*time.Second, shm.ModeProbe)
	h.spawn("rw-read-hold")
	h.waitHeld()
	cpu := func() time.Duration {
		var a, b syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &a)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := h.rw.Acquire(ctx)
		cancel()
		var he *shmlock.HeldError
		require.ErrorAs(t, err, &he)
		syscall.Getrusage(syscall.RUSAGE_SELF, &b)
		return time.Duration(b.Utime.Nano() + b.Stime.Nano() - a.Utime.Nano() - a.Stime.Nano())
	}
	quiet := cpu()
	poller := h.spawn("rw-tryrlock-poller")
	time.Sleep(100 * time.Millisecond)
	busy := cpu()
	atomic.StoreUint64(&h.w[rwStop], 1)
	poller.Wait(t, 10*time.Second)
	t.Logf("a writer's CPU over a 1 s wait: %v alone, %v beside a TryRLock poller", quiet, busy)
	assert.Less(t, busy, 100*time.Millisecond, "the poller keeps the waiting writer awake")
}

// A Break of a waiting writer's hold (an administrator's, on a writer stuck
// behind a reader) leaves its Acquire to end as documented, with a
// HeldError, not a panic.
func TestRWBreakOfAWaitingWriter(t *testing.T) {
	h := newRWHarness(t, 60*time.Second, shm.ModeProbe)
	l, lock, _ := rwLayout()
	r2, err := shm.Open(h.path, shm.Options{Layout: l, Slots: rwSlots})
	require.NoError(t, err)
	defer r2.Close()
	admin, err := shmlock.NewRWMutex(r2, lock)
	require.NoError(t, err)
	admin.RLock()
	defer admin.RUnlock()
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := h.rw.Acquire(ctx)
		res <- err
	}()
	time.Sleep(50 * time.Millisecond)
	st := admin.Inspect()
	require.True(t, st.Writer.Held)
	require.NoError(t, admin.Break(st.Writer.Owner))
	var he *shmlock.HeldError
	assert.ErrorAs(t, <-res, &he)
}

// A context that ends just as the writer's drain returns, and a Close right
// after: the context's callback touches nothing of the closed region (under
// -race, no race with Close).
func TestRWLateContextAndClose(t *testing.T) {
	path := fmt.Sprintf("%s/shmlock-test-%d-late", shm.Dir, os.Getpid())
	defer os.Remove(path)
	l, lock, _ := rwLayout()
	ra, err := shm.Open(path, shm.Options{Layout: l, Slots: rwSlots})
	require.NoError(t, err)
	defer ra.Close()
	reader, err := shmlock.NewRWMutex(ra, lock)
	require.NoError(t, err)
	for i := range 200 {
		reader.RLock()
		rb, err := shm.Open(path, shm.Options{Layout: l, Slots: rwSlots})
		require.NoError(t, err)
		w, err := shmlock.NewRWMutex(rb, lock)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			if g, err := w.Acquire(ctx); err == nil {
				g.Release()
			}
			close(done)
		}()
		time.Sleep(time.Millisecond)
		if i%2 == 0 {
			reader.RUnlock()
			cancel()
		} else {
			cancel()
			reader.RUnlock()
		}
		<-done
		require.NoError(t, rb.Close())
	}
}
