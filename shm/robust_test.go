//go:build linux

package shm

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/internal/robust"
)

func openRobust(t *testing.T, path string, opt Options) *Region {
	t.Helper()
	opt.Mode = ModeRobust
	r, err := Open(path, opt)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

// recorded returns the thread IDs slot s counts, read through the file.
func recorded(t *testing.T, path string, s int) []uint32 {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	e := b[s*entryBytes:]
	n := binary.NativeEndian.Uint32(e[entNTIDs:])
	var tids []uint32
	for i := range n {
		tids = append(tids, binary.NativeEndian.Uint32(e[entTIDs+4*int(i):]))
	}
	return tids
}

// attachedTID starts a child attached to the robust region at path that has
// linked line 0, and returns it with the thread ID it records.
func attachedTID(t *testing.T, path string) (*proctest.Child, uint32) {
	return attachedAs(t, "attach-tid", path)
}

// A robust region records its mode; every line an attachment makes a lock
// for is linked into one list, whose thread ID the attachment records in its
// entry before it names any lock; the probe finds a holder by that ID.
func TestRobustRecordsTIDs(t *testing.T) {
	path := tempPath(t)
	r := openRobust(t, path, Options{Size: 4096, Slots: 8})
	assert.Equal(t, ModeRobust, r.Mode())
	a, err := r.ownerFor(0)
	require.NoError(t, err)
	b, err := r.ownerFor(64)
	require.NoError(t, err)
	assert.Equal(t, a, b, "one list for both lines")
	assert.NotEqual(t, r.ownerID(), a, "a thread ID, not the owner ID")
	assert.NoError(t, syscall.Tgkill(os.Getpid(), int(a), 0), "the ID of a live thread of ours")
	assert.Equal(t, []uint32{a}, recorded(t, path, slotOf(r.ownerID())))
	h := r.probe(a)
	assert.Equal(t, Alive, h.State, h.String())
	assert.Equal(t, "this process", h.Reason)

	child, tid := attachedTID(t, path)
	assert.NotEqual(t, a, tid)
	h = r.probe(tid)
	assert.Equal(t, Alive, h.State, h.String())
	assert.EqualValues(t, child.Pid(), h.PID, "the table maps the thread ID to its process")
	assert.EqualValues(t, tid, h.TID)
	child.Kill()
	h = r.probe(tid)
	assert.Equal(t, Dead, h.State, h.String())
	assert.Contains(t, h.Reason, "liveness lock is free")

	h = r.probe(4_000_000)
	assert.Equal(t, Dead, h.State, "a thread ID nobody records: its holder is gone, or the word corrupt")
	assert.Contains(t, h.Reason, "no attached process records thread 4000000")

	// Opening it in the other mode is refused, typed.
	_, err = Open(path, Options{Mode: ModeProbe})
	require.ErrorIs(t, err, ErrMode)
	var e *Error
	require.True(t, errors.As(err, &e))
	assert.Contains(t, err.Error(), "created in robust mode, and is asked for in probe mode")
	auto, err := Open(path, Options{})
	require.NoError(t, err, "ModeAuto opens it in its own mode")
	assert.Equal(t, ModeRobust, auto.Mode())
	auto.Close()
}

// No thread ID is recorded twice in the table: IDs that live claimants
// record (planted, with their liveness locks held), covering the next ones
// the kernel hands out, are skipped.
func TestRobustTIDsUnique(t *testing.T) {
	path := tempPath(t)
	const slots = 32
	r := openRobust(t, path, Options{Size: 4096, Slots: slots})
	mine, err := r.ownerFor(0)
	require.NoError(t, err)
	// A new list's thread is one of this process's idle threads (as many
	// as the tests before left), or a new one, whose ID the kernel hands
	// out after the newest. Plant all of those in the free slots from 5 on,
	// as live claimants in another PID namespace would have them: their
	// liveness locks held.
	tasks, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	var planted []uint32
	newest := uint32(0)
	for _, d := range tasks {
		n, err := strconv.ParseUint(d.Name(), 10, 32)
		require.NoError(t, err)
		if uint32(n) != mine {
			planted = append(planted, uint32(n))
		}
		newest = max(newest, uint32(n))
	}
	for next := newest + 1; len(planted) < 4*maxTIDs || len(planted)%maxTIDs != 0; next++ {
		planted = append(planted, next)
	}
	last := 4 + len(planted)/maxTIDs
	require.LessOrEqual(t, last, slots, "more threads than the table can plant")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	for s := 5; s <= last; s++ {
		var e [entryBytes]byte
		for i, tid := range planted[(s-5)*maxTIDs : (s-4)*maxTIDs] {
			binary.NativeEndian.PutUint32(e[entTIDs+4*i:], tid)
		}
		binary.NativeEndian.PutUint32(e[entNTIDs:], maxTIDs)
		// The lock first, as a claimant takes it: a record without it
		// is a dead claimant's, which a retirement may clear.
		require.NoError(t, tryLockByte(int(f.Fd()), int64(s*entryBytes)))
		_, err = f.WriteAt(e[:], int64(s*entryBytes))
		require.NoError(t, err)
	}

	other := openRobust(t, path, Options{})
	tid, err := other.ownerFor(0)
	require.NoError(t, err)
	assert.NotContains(t, planted, tid, "a recorded ID was handed out again")
	assert.NotEqual(t, mine, tid)
	t.Logf("planted %d IDs (%d threads of ours, and those after %d); the new attachment uses %d", len(planted), len(tasks)-1, newest, tid)
}

// An attachment with locks on more lines than one list holds starts another
// list, and records its thread ID.
func TestRobustManyLines(t *testing.T) {
	path := tempPath(t)
	n := robust.Limit + 10
	r := openRobust(t, path, Options{Size: n * LineSize, Slots: 4})
	tids := map[uint32]int{}
	for i := range n {
		tid, err := r.ownerFor(i * LineSize)
		require.NoError(t, err)
		tids[tid]++
	}
	require.Len(t, tids, 2)
	counts := []int{}
	for _, c := range tids {
		counts = append(counts, c)
	}
	assert.ElementsMatch(t, []int{robust.Limit, 10}, counts)
	assert.Len(t, recorded(t, path, slotOf(r.ownerID())), 2)
}

// Close gives up the locks its attachment holds as its death would: each word
// naming one of its threads is marked owner-died, with the waiters bit and the
// high half kept, and words of other owners are left alone.
func TestRobustCloseMarks(t *testing.T) {
	path := tempPath(t)
	keep := openRobust(t, path, Options{Size: 4096, Slots: 4})
	r, err := Open(path, Options{})
	require.NoError(t, err)
	tid, err := r.ownerFor(0)
	require.NoError(t, err)
	_, err = r.ownerFor(64)
	require.NoError(t, err)
	l0, _ := keep.lockLine(0)
	l1, _ := keep.lockLine(64)
	atomic.StoreUint64(&l0[0], 7<<32|line.Waiters|uint64(tid))
	atomic.StoreUint64(&l1[0], 9<<32|12345)
	require.NoError(t, r.Close())
	assert.Equal(t, uint64(7<<32|line.Waiters|line.OwnerDied), atomic.LoadUint64(&l0[0]))
	assert.Equal(t, uint64(9<<32|12345), atomic.LoadUint64(&l1[0]))
	_, err = r.ownerFor(128)
	assert.ErrorIs(t, err, ErrClosed)
}

// An attachment links at most maxTIDs lists of robust.Limit lines: the next
// line is refused with ErrLimit, which says which limit and the way out, and
// the lines linked so far keep working.
func TestRobustTooManyLines(t *testing.T) {
	n := maxTIDs*robust.Limit + 1
	r := openRobust(t, tempPath(t), Options{Size: n * LineSize, Slots: 2})
	for i := range n - 1 {
		_, err := r.ownerFor(i * LineSize)
		require.NoError(t, err, "line %d", i)
	}
	_, err := r.ownerFor((n - 1) * LineSize)
	require.ErrorIs(t, err, ErrLimit)
	assert.NotErrorIs(t, err, ErrFull, "the process table is not full")
	assert.Contains(t, err.Error(), "this attachment links 32768 lock lines")
	assert.Contains(t, err.Error(), "ModeProbe")
	tid, err := r.ownerFor(0)
	require.NoError(t, err)
	assert.NotZero(t, tid)
}

// plantDead records tids in slot s as a dead claimant would have left them:
// no liveness lock is held on the slot.
func plantDead(t *testing.T, path string, s int, tids ...uint32) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	var e [entryBytes]byte
	binary.NativeEndian.PutUint32(e[entIncarnation:], 1)
	binary.NativeEndian.PutUint32(e[entPID:], 99999)
	for i, tid := range tids {
		binary.NativeEndian.PutUint32(e[entTIDs+4*i:], tid)
	}
	binary.NativeEndian.PutUint32(e[entNTIDs:], uint32(len(tids)))
	_, err = f.WriteAt(e[:], int64(s*entryBytes))
	require.NoError(t, err)
}

// The thread IDs dead claimants recorded do not pile up: the next attach
// retires them in the background, having marked any lock word that still
// names one (a word the kernel did not mark), so a container, whose threads
// are numbered from 1 like every other container's, finds a free ID at once,
// and a reused ID never inherits a dead holder's lock. (Without retirement
// 300 dead records of the IDs 1..300 made the 259th container's Open fail.)
func TestRobustDeadTIDsRetired(t *testing.T) {
	path := tempPath(t)
	r := openRobust(t, path, Options{Size: 4 * LineSize, Slots: 400})
	mine, err := r.ownerFor(0)
	require.NoError(t, err)
	<-r.robust.retired // its own retirement is over: the dead below are the next Open's
	for s := 2; s <= 301; s++ {
		tid := uint32(s - 1)
		if tid == mine {
			tid = 100000 + tid
		}
		plantDead(t, path, s, tid)
	}
	// A lock the kernel did not mark, left by the dead claimant of ID 7,
	// with a waiter's bit; and a lock held by this live attachment.
	l1, _ := r.lockLine(LineSize)
	l2, _ := r.lockLine(2 * LineSize)
	require.NoError(t, r.place(LineSize, region.KindMutex, 0))
	require.NoError(t, r.place(2*LineSize, region.KindMutex, 0))
	atomic.StoreUint64(&l1[0], 5<<32|line.Waiters|7)
	atomic.StoreUint64(&l2[0], 6<<32|uint64(mine))

	start := time.Now()
	other := openRobust(t, path, Options{})
	t.Logf("Open took %v", time.Since(start))
	_, err = other.ownerFor(0)
	require.NoError(t, err)
	<-other.robust.retired // the retirement runs in the background
	for s := 2; s <= 301; s++ {
		if slotOf(other.ownerID()) != s {
			assert.Empty(t, recorded(t, path, s), "slot %d: a dead claimant's IDs still recorded", s)
		}
	}
	assert.Equal(t, []uint32{mine}, recorded(t, path, slotOf(r.ownerID())), "a live attachment's ID is kept")
	assert.Equal(t, uint64(5<<32|line.Waiters|line.OwnerDied), atomic.LoadUint64(&l1[0]), "the dead ID's word is marked before the ID is freed")
	assert.Equal(t, uint64(6<<32|uint64(mine)), atomic.LoadUint64(&l2[0]), "a live attachment's word is left alone")
	require.NoError(t, other.Close())
	assert.Empty(t, recorded(t, path, slotOf(other.ownerID())), "Close retires its own IDs")
}

// Close after the file was truncated under the mapping (bad input) returns;
// it does not fault on the lost pages.
func TestRobustCloseTruncated(t *testing.T) {
	path := tempPath(t)
	out, err := runRole(t, os.Args[0], nil, "close-truncated", path)
	require.NoError(t, err, out)
	assert.Contains(t, out, "closed: <nil>")
}

// A probe never waits for a lock constructor that waits for the lock on
// byte 0 (to record a new list's thread ID): an Acquire's deadline holds.
func TestRobustProbeDoesNotWaitForNew(t *testing.T) {
	path := tempPath(t)
	n := robust.Limit + 1
	r := openRobust(t, path, Options{Size: n * LineSize, Slots: 4})
	for i := range robust.Limit {
		_, err := r.ownerFor(i * LineSize)
		require.NoError(t, err)
	}
	mine, _ := r.ownerFor(0)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, tryLockByte(int(f.Fd()), 0), "another open file description holds byte 0")
	done := make(chan error, 1)
	go func() { _, err := r.ownerFor(robust.Limit * LineSize); done <- err }()
	time.Sleep(50 * time.Millisecond) // it waits for byte 0, holding its lists' lock
	start := time.Now()
	h := r.probe(mine)
	assert.Less(t, time.Since(start), 100*time.Millisecond, "the probe waited")
	assert.Equal(t, "this process", h.Reason)
	unlockByte(int(f.Fd()), 0)
	require.NoError(t, <-done)
}

func threads(t *testing.T) int { return proctest.Threads(t) }

// plantLive records tids in the slots from first on, maxTIDs a slot, as live
// claimants (in other PID namespaces, say) would have them: their liveness
// locks held, through a descriptor the test keeps open.
func plantLive(t *testing.T, path string, first int, tids []uint32) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	for s := first; len(tids) > 0; s++ {
		var e [entryBytes]byte
		n := min(len(tids), maxTIDs)
		for i, tid := range tids[:n] {
			binary.NativeEndian.PutUint32(e[entTIDs+4*i:], tid)
		}
		binary.NativeEndian.PutUint32(e[entNTIDs:], uint32(n))
		// The lock first, as a claimant takes it: a record without it
		// is a dead claimant's, which a retirement may clear.
		require.NoError(t, tryLockByte(int(f.Fd()), int64(s*entryBytes)), "live: its liveness lock held")
		_, err = f.WriteAt(e[:], int64(s*entryBytes))
		require.NoError(t, err)
		tids = tids[n:]
	}
}

// inOwnPIDNamespace runs the calling test again, alone, in a new PID
// namespace, and reports whether it did (the caller then returns); it
// reports false in that namespace, or where no namespace can be made.
func inOwnPIDNamespace(t *testing.T) bool {
	const env = "SHM_TEST_OWN_PIDNS"
	if os.Getenv(env) != "" || os.Geteuid() != 0 {
		return false
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return false
	}
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "--kill-child",
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := new(proctest.Buffer)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute): // the watchdog
		cmd.Process.Kill()
		<-done
		t.Fatalf("the test in its own PID namespace did not end:\n%s", out.String())
	}
	if err != nil && !strings.Contains(out.String(), "--- ") {
		t.Logf("no PID namespace here (%v): running in this one\n%s", err, out.String())
		return false
	}
	t.Logf("in a PID namespace of its own:\n%s", out.String())
	require.NoError(t, err)
	return true
}

// An attach that finds the IDs of its threads and of the next ones taken by
// live attachments (hundreds of containers, which number their threads
// alike, or a corrupt table) skips the taken IDs rather than try a thread
// for each: it ends up with a free ID and a thread or two more than it had.
// A table that takes more IDs than a search skips refuses robust mode with
// ErrLimit, typed (a later try goes on from the IDs skipped so far), and no
// try costs more threads.
//
// Where it can (root, util-linux), the test runs in a PID namespace of its
// own: the IDs it plants are the next ones the kernel hands out, and other
// processes (the other packages' tests, run in parallel) taking IDs meanwhile
// would move the search past them and pass the second case by chance.
func TestRobustSearchSkipsTakenIDs(t *testing.T) {
	if inOwnPIDNamespace(t) {
		return
	}
	for _, c := range []struct {
		name  string
		slots int
		ok    bool
	}{
		{"3,000 taken", 190, true},
		{"16,000 taken", MaxSlots, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := tempPath(t)
			r := openRobust(t, path, Options{Size: 4096, Slots: c.slots})
			_, err := r.ownerFor(0)
			require.NoError(t, err)
			taken, err := threadIDs((c.slots - 4) * maxTIDs)
			require.NoError(t, err)
			taken = taken[:(c.slots-4)*maxTIDs]
			plantLive(t, path, 3, taken)
			before := threads(t)
			for i := range 3 {
				start := time.Now()
				other, err := Open(path, Options{})
				took := time.Since(start)
				switch {
				case err == nil:
					require.True(t, c.ok || i > 0, "a search skipped more IDs than it may")
					tid, err := other.ownerFor(0)
					require.NoError(t, err)
					assert.NotContains(t, taken, tid)
					other.Close()
				case !c.ok:
					require.ErrorIs(t, err, ErrLimit)
					assert.Contains(t, err.Error(), "every thread tried has an ID the process table records")
				default:
					require.NoError(t, err)
				}
				time.Sleep(10 * time.Millisecond) // threads that took IDs are gone
				t.Logf("try %d: %d IDs taken; threads %d before, %d now; took %v (%v)", i, len(taken), before, threads(t), took, err)
			}
			assert.LessOrEqual(t, threads(t)-before, 16, "threads beyond the few a search holds")
		})
	}
}

// While a retirement sweeps for a dead slot's thread IDs, that slot cannot be
// claimed (its claimant could reuse one of the IDs, and hold a lock the sweep
// has yet to reach, and the sweep would mark it: two holders). The retirer
// holds the slot's liveness byte (shared) from before it reads the record to
// the end of its sweep; an Open meanwhile gets another slot, or waits.
func TestRobustSweepKeepsTheSlot(t *testing.T) {
	if runtime.GOARCH == "386" {
		// Its sweep hook stops the first background sweep of the process,
		// which under GOARCH=386 is now and then not the retirement of the
		// slot it then looks at, and the Open it starts then finds that
		// slot free a moment late. It runs on 64-bit systems.
		t.Skip("flaky under GOARCH=386: the sweep it stops is not always the one it checks")
	}
	path := tempPath(t)
	r := openRobust(t, path, Options{Size: 4 * LineSize, Slots: 3})
	<-r.robust.retired
	require.NoError(t, r.place(0, region.KindMutex, 0))
	plantDead(t, path, 2, 4_000_001)
	plantDead(t, path, 3, 4_000_002)
	inSweep, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	sweepHook = func() { once.Do(func() { close(inSweep); <-resume }) }
	defer func() { sweepHook = nil }()

	retirer := openRobust(t, path, Options{}) // claims slot 2 or 3, and retires the other
	<-inSweep
	other := 5 - slotOf(retirer.ownerID()) // the slot of 2 and 3 that retirer did not claim
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	assert.ErrorIs(t, tryLockByte(int(f.Fd()), int64(other*entryBytes)), errLocked, "the slot being retired can be claimed")
	h := r.probe(uint32(4_000_000 + other - 1))
	assert.Equal(t, Dead, h.State, "a probe took the retirement's shared lock for a live claimant: %v", h)
	// An Open, whose only free slot this is, waits for the retirement
	// rather than call the table full.
	opened := make(chan *Region, 1)
	go func() {
		c, err := Open(path, Options{})
		assert.NoError(t, err, "the table called full while a slot was being retired")
		opened <- c
	}()
	select {
	case <-opened:
		t.Fatal("an Open claimed the slot being retired")
	case <-time.After(200 * time.Millisecond):
	}
	close(resume)
	<-retirer.robust.retired
	assert.Empty(t, recorded(t, path, other), "retired once the sweep is over")
	if c := <-opened; c != nil {
		assert.Equal(t, other, slotOf(c.ownerID()))
		c.Close()
	}
}
