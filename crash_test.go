//go:build linux && shmlock_fault

package shmlock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// The crash tests run with: go test -tags shmlock_fault -run CrashPoints .
// Each row kills a real process at one named step of a protocol (see
// internal/fault) and checks that the survivors make progress within a
// bound, that there are never two holders, that the committed count is
// exact, and that no torn value is accepted.

// The seqlock region: a SeqLock, a Record, and counters.
const (
	crashSize = 64

	cTorn    = 0 // reads accepted that failed verification
	cOK      = 1 // reads verified
	cStop    = 2 // nonzero: stop
	cWrites  = 3 // writes committed
	cHanging = 4 // a hanging writer is mid-write
)

type seqEnv struct {
	r    *shm.Region
	seq  *seqlock.SeqLock
	rec  *seqlock.Record
	ctrs []uint64
}

func openSeqEnv(path string, mode shm.Mode) (*seqEnv, error) {
	recOff := seqlock.SeqLockSize(crashSize)
	ctrOff := recOff + seqlock.RecordSize(crashSize)
	r, err := shm.Open(path, shm.Options{Size: ctrOff + shm.LineSize, Slots: 32, Mode: mode})
	if err != nil {
		return nil, err
	}
	e := &seqEnv{r: r}
	if e.seq, err = seqlock.NewSeqLock(r, 0, crashSize); err != nil {
		return nil, err
	}
	if e.rec, err = seqlock.NewRecord(r, recOff, crashSize); err != nil {
		return nil, err
	}
	b, _ := r.Bytes(ctrOff, shm.LineSize)
	e.ctrs = unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), 8)
	return e, nil
}

func (e *seqEnv) get(c int) uint64 { return atomic.LoadUint64(&e.ctrs[c]) }
func (e *seqEnv) add(c int)        { atomic.AddUint64(&e.ctrs[c], 1) }

// crashValue is a record whose words all derive from word 0.
func crashValue(v uint64) []byte {
	b := make([]byte, crashSize)
	for i := range crashSize / 8 {
		w := v
		if i > 0 {
			w = (v+uint64(i))*0x9E3779B97F4A7C15 ^ uint64(i)
		}
		*(*uint64)(unsafe.Pointer(&b[8*i])) = w
	}
	return b
}

// crashVerify accepts a value one write stored, or the zeros of a fresh
// region (a clean record).
func crashVerify(b []byte) bool {
	return string(b) == string(crashValue(*(*uint64)(unsafe.Pointer(&b[0])))) || string(b) == string(make([]byte, len(b)))
}

// The crash tests' roles, which exist in fault builds only.
func init() {
	roles["crash-writer"] = crashWriter
	roles["crash-reader"] = crashReader
	roles["crash-hang"] = crashHang
	roles["crash-read-once"] = crashReadOnce
	roles["crash-write-once"] = crashWriteOnce
	roles["crash-create"] = crashCreate
}

// crashLayout is a layout of a lock and size bytes of data.
func crashLayout(size int) *shm.Layout {
	var l shm.Layout
	l.Lock("lock", shmlock.Size)
	l.Data("data", size)
	return &l
}

// crashCreate creates the region at args[0] with crashLayout(args[1]).
func crashCreate(args []string) int {
	size, _ := strconv.Atoi(args[1])
	r, err := shm.Open(args[0], shm.Options{Layout: crashLayout(size)})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	r.Close()
	return 0
}

// crashWriteOnce writes crashValue(args[1]) to the Record of the region at
// args[0], once, and commits it.
func crashWriteOnce(args []string) int {
	e, err := openSeqEnv(args[0], shm.ModeAuto)
	if err != nil {
		panic(err)
	}
	v, _ := strconv.ParseUint(args[1], 10, 64)
	w, err := e.rec.Write(context.Background())
	if err != nil {
		panic(err)
	}
	w.Store(crashValue(v))
	w.Commit()
	w.Release()
	return 0
}

// crashWriter writes the SeqLock (args[1] "seq") or the Record of the region
// at args[0] until stopped.
func crashWriter(args []string) int {
	e, err := openSeqEnv(args[0], shm.ModeAuto)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for v := uint64(os.Getpid()) << 32; e.get(cStop) == 0; v++ {
		b := crashValue(v)
		if args[1] == "seq" {
			w, err := e.seq.Write(ctx)
			if err != nil {
				panic(err)
			}
			w.StoreAt(0, b[:16])
			w.Store(b)
			w.Commit()
			w.Release()
		} else {
			u, err := e.rec.Write(ctx)
			if err != nil {
				panic(err)
			}
			u.Store(b)
			u.Commit()
			u.Release()
		}
		e.add(cWrites)
	}
	return 0
}

// crashReader reads both records of the region at args[0], verifying each
// value, until stopped.
func crashReader(args []string) int {
	e, err := openSeqEnv(args[0], shm.ModeAuto)
	if err != nil {
		panic(err)
	}
	b := make([]byte, crashSize)
	for e.get(cStop) == 0 {
		if err := e.seq.Read(b); err == nil {
			if crashVerify(b) {
				e.add(cOK)
			} else {
				e.add(cTorn)
				fmt.Printf("torn SeqLock value %x\n", b)
			}
		} else if !errors.Is(err, seqlock.ErrDirty) {
			panic(err)
		}
		e.rec.Read(b)
		if crashVerify(b) {
			e.add(cOK)
		} else {
			e.add(cTorn)
			fmt.Printf("torn Record value %x\n", b)
		}
	}
	return 0
}

// crashHang makes half a SeqLock write in the region at args[0], then hangs.
func crashHang(args []string) int {
	e, err := openSeqEnv(args[0], shm.ModeAuto)
	if err != nil {
		panic(err)
	}
	w, _ := e.seq.Write(context.Background())
	w.StoreAt(0, crashValue(1)[:8])
	e.add(cHanging)
	select {}
}

// crashReadOnce reads the SeqLock of the region at args[0] once, and says
// what came of it.
func crashReadOnce(args []string) int {
	e, err := openSeqEnv(args[0], shm.ModeAuto)
	if err != nil {
		panic(err)
	}
	err = e.seq.Read(make([]byte, crashSize))
	fmt.Printf("err=%v\n", err)
	return 0
}

func faultEnv(p fault.Point, n int) []string {
	return []string{fmt.Sprintf("SHMLOCK_FAULT=%s:%d", p, n)}
}

// diedAt waits for the victim to kill itself at p.
func diedAt(t *testing.T, victim *child, p fault.Point) {
	t.Helper()
	out := victim.Wait(t, 20*time.Second)
	require.Contains(t, out, "fault: dying at "+p.String(), "the victim never reached the point")
}

// finalRepair takes the mutex once in the test process, as any process
// would, and checks the counts.
func (h *harness) finalCheck(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), recoveryBound)
	defer cancel()
	g, err := h.mu.Acquire(ctx)
	require.NoError(t, err, "the lock is wedged")
	if g.Recovered() {
		h.repair()
	}
	g.Release()
	assert.Equal(t, h.sumMine(), h.load(offCounter), "lost or double-counted increments")
	assert.Zero(t, h.load(offViolation), "two holders at once")
}

// A row of the crash-point table: the scenario of one point, in one mode.
type crashRow func(t *testing.T, p fault.Point, mode shm.Mode)

// mutexUnderLoad: the victim is one of three incrementing workers and dies
// on its n-th pass through the point; the other two go on.
func mutexUnderLoad(n int) crashRow {
	return func(t *testing.T, p fault.Point, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		victim := h.spawnIn(h.path, faultEnv(p, n), "increment", "0", "0")
		a := h.spawn("increment", "1", "0")
		b := h.spawn("increment", "2", "0")
		diedAt(t, victim, p)
		c0 := h.load(offCounter)
		h.eventually(10*time.Second, "no progress after the death", func() bool { return h.load(offCounter) >= c0+100 })
		*h.word(offStop) = 1
		a.Wait(t, 20*time.Second)
		b.Wait(t, 20*time.Second)
		h.finalCheck(t)
	}
}

// starvingUnderLoad is mutexUnderLoad with every worker starving at once, so
// that every release with sleepers leaves the word reserved for them.
func starvingUnderLoad(n int) crashRow {
	return func(t *testing.T, p fault.Point, mode shm.Mode) {
		h := newModeHarness(t, 60*time.Second, mode)
		starve := []string{starveEnv + "=1"}
		victim := h.spawnIn(h.path, append(faultEnv(p, n), starve...), "increment", "0", "0")
		a := h.spawnIn(h.path, starve, "increment", "1", "0")
		b := h.spawnIn(h.path, starve, "increment", "2", "0")
		diedAt(t, victim, p)
		c0 := h.load(offCounter)
		h.eventually(10*time.Second, "no progress after the death", func() bool { return h.load(offCounter) >= c0+100 })
		*h.word(offStop) = 1
		a.Wait(t, 20*time.Second)
		b.Wait(t, 20*time.Second)
		h.finalCheck(t)
	}
}

// quitterUnderLoad: the victim waits with short timeouts beside two starving
// incrementing workers, and dies as it leaves without the lock, before it
// hands on a wake-up it may hold; the workers go on.
func quitterUnderLoad(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newModeHarness(t, 60*time.Second, mode)
	starve := []string{starveEnv + "=1"}
	a := h.spawnIn(h.path, starve, "increment", "1", "0")
	b := h.spawnIn(h.path, starve, "increment", "2", "0")
	victim := h.spawnIn(h.path, append(faultEnv(p, 2), starve...), "timed")
	diedAt(t, victim, p)
	c0 := h.load(offCounter)
	h.eventually(10*time.Second, "no progress after the death", func() bool { return h.load(offCounter) >= c0+100 })
	*h.word(offStop) = 1
	a.Wait(t, 20*time.Second)
	b.Wait(t, 20*time.Second)
	h.finalCheck(t)
}

// mutexRecoverer: the victim is the one waiter of a holder that is killed,
// and dies on its way to recovering (or to sleep); two later workers must
// still get through.
func mutexRecoverer(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newModeHarness(t, 60*time.Second, mode)
	holder := h.spawn("hold")
	h.waitHeld()
	victim := h.spawnIn(h.path, faultEnv(p, 1), "increment", "0", "1")
	h.waitSleepers()
	holder.Kill()
	diedAt(t, victim, p)
	h.recoverersGetThrough(t)
}

// deadlineRecoverer: the victim, its context already done, finds the holder
// dead (in robust mode, one the kernel could not mark) and dies once its CAS
// took the lock over; two later workers must still get through, told.
func deadlineRecoverer(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newModeHarness(t, 60*time.Second, mode)
	h.deadHolder(t, mode)
	victim := h.spawnIn(h.path, faultEnv(p, 1), "acquire-expired")
	diedAt(t, victim, p)
	h.recoverersGetThrough(t)
}

// mutexStuckRecoverer (robust mode): a holder died and the kernel did not
// mark its lock word, the case the probe is kept for behind the kernel. It
// is simulated: the test process holds the lock until the victim sleeps on
// it, then turns its hold into one of an attachment that is gone (it closed
// the region and exited before the victim attached, so nothing marked the
// word, and no slot records its thread). The victim probes it dead, and dies
// on its way to recovering; two later workers must still get through.
func mutexStuckRecoverer(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newModeHarness(t, 60*time.Second, mode)
	ghost := h.goneTID(t, true)
	h.mu.Lock()
	victim := h.spawnIn(h.path, faultEnv(p, 1), "increment", "0", "1")
	h.waitSleepers()
	w := h.load(offMutex)
	require.True(t, atomic.CompareAndSwapUint64(h.word(offMutex), w, w&^(1<<30-1)|uint64(ghost)))
	diedAt(t, victim, p)
	h.recoverersGetThrough(t)
}

// closerDies (robust mode): the victim holds the lock and closes the region,
// and dies once Close has marked its held word, before its lists are
// unregistered and its thread IDs retired. The lock is taken over, told, and
// the victim's IDs are retired by a later attach.
func closerDies(t *testing.T, p fault.Point, mode shm.Mode) {
	if mode != shm.ModeRobust {
		t.Skip("a step of robust mode")
	}
	h := newModeHarness(t, 60*time.Second, mode)
	victim := h.spawnIn(h.path, faultEnv(p, 1), "hold-close")
	diedAt(t, victim, p)
	got, err := h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, got, "the lock Close gave up is taken over, told")
	h.recoverersGetThrough(t)
}

// retirerDies (robust mode): an attachment died without Close, leaving a
// lock word the kernel did not mark (simulated); the victim, attaching
// next, sweeps it and dies before it clears the dead record. The word is
// marked all the same, and a later attach retires the record.
// creatorDies: the victim creates a region with one layout and dies after
// writing its header, fingerprint included, but before the ready magic. The
// next opener initialises the region anew with its own layout, which every
// later opener is held to: the dead creator's layout is never trusted.
func creatorDies(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newModeHarness(t, 60*time.Second, mode)
	path := h.path + "-created"
	os.Remove(path)
	defer os.Remove(path)
	diedAt(t, h.spawnIn(path, faultEnv(p, 1), "crash-create", "8"), p)
	r, err := shm.Open(path, shm.Options{Layout: crashLayout(16), Mode: mode})
	require.NoError(t, err, "the region a creator left half made is made anew")
	defer r.Close()
	_, err = shm.Open(path, shm.Options{Layout: crashLayout(8), Mode: mode})
	assert.ErrorIs(t, err, shm.ErrLayout, "the dead creator's layout was kept")
	out := h.spawnIn(path, nil, "crash-create", "16").Wait(t, 20*time.Second)
	assert.Empty(t, out, "the new layout opens the region")
}

func retirerDies(t *testing.T, p fault.Point, mode shm.Mode) {
	if mode != shm.ModeRobust {
		t.Skip("a step of robust mode")
	}
	h := newModeHarness(t, 60*time.Second, mode)
	h.setOwner(8<<32 | uint64(h.exitedTID(t)))
	victim := h.spawnIn(h.path, faultEnv(p, 1), "linger")
	diedAt(t, victim, p)
	s := h.mu.Inspect()
	assert.False(t, s.Held, "the swept word is free")
	assert.True(t, s.OwnerDied, "and marked")
	h.recoverersGetThrough(t)
}

// recoverersGetThrough: after the death of a victim on its way to recovering
// the lock, two workers increment a hundred times each.
func (h *harness) recoverersGetThrough(t *testing.T) {
	a := h.spawn("increment", "1", "100")
	b := h.spawn("increment", "2", "100")
	a.Wait(t, 20*time.Second)
	b.Wait(t, 20*time.Second)
	assert.EqualValues(t, 200, h.sumMine()-atomic.LoadUint64(h.word(offMine)))
	h.finalCheck(t)
}

func newSeqHarness(t *testing.T, mode shm.Mode) (*harness, *seqEnv, string) {
	h := newModeHarness(t, 60*time.Second, mode)
	path := h.path + "-seq"
	os.Remove(path)
	e, err := openSeqEnv(path, mode)
	require.NoError(t, err)
	t.Cleanup(func() { e.r.Close(); os.Remove(path) })
	return h, e, path
}

// writerUnderLoad: the victim is one of two writers of the SeqLock or the
// Record, read by two verifying readers, and dies on its n-th pass.
func writerUnderLoad(kind string, n int) crashRow {
	return func(t *testing.T, p fault.Point, mode shm.Mode) {
		h, e, path := newSeqHarness(t, mode)
		r1 := h.spawnIn(path, nil, "crash-reader")
		r2 := h.spawnIn(path, nil, "crash-reader")
		w := h.spawnIn(path, nil, "crash-writer", kind)
		victim := h.spawnIn(path, faultEnv(p, n), "crash-writer", kind)
		diedAt(t, victim, p)
		c0 := e.get(cWrites)
		h.eventually(10*time.Second, "no write after the death", func() bool { return e.get(cWrites) >= c0+100 })
		o0 := e.get(cOK)
		h.eventually(10*time.Second, "no read after the death", func() bool { return e.get(cOK) >= o0+100 })
		atomic.StoreUint64(&e.ctrs[cStop], 1)
		for _, c := range []*child{r1, r2, w} {
			c.Wait(t, 20*time.Second)
		}
		assert.Zero(t, e.get(cTorn), "torn values accepted")
	}
}

// seqReaderRecoverer: a writer is killed mid-write; the victim is the reader
// that recovers it, and dies on the way; another reader must still finish.
func seqReaderRecoverer(t *testing.T, p fault.Point, mode shm.Mode) {
	h, e, path := newSeqHarness(t, mode)
	w := h.spawnIn(path, nil, "crash-hang")
	h.eventually(10*time.Second, "the writer never started", func() bool { return e.get(cHanging) == 1 })
	w.Kill()
	victim := h.spawnIn(path, faultEnv(p, 1), "crash-read-once")
	diedAt(t, victim, p)
	out := h.spawnIn(path, nil, "crash-read-once").Wait(t, 10*time.Second)
	assert.Contains(t, out, "err="+seqlock.ErrDirty.Error())
	ww, err := e.seq.Write(context.Background())
	require.NoError(t, err)
	require.NoError(t, ww.Store(crashValue(9)))
	ww.Commit()
	ww.Release()
	b := make([]byte, crashSize)
	require.NoError(t, e.seq.Read(b), "clean after a full write")
	assert.True(t, crashVerify(b))
}

// readerUnderLoad: the victim is a reader; writers and other readers go on.
func readerUnderLoad(n int) crashRow {
	return func(t *testing.T, p fault.Point, mode shm.Mode) {
		h, e, path := newSeqHarness(t, mode)
		w := h.spawnIn(path, nil, "crash-writer", "rec")
		r := h.spawnIn(path, nil, "crash-reader")
		victim := h.spawnIn(path, faultEnv(p, n), "crash-reader")
		diedAt(t, victim, p)
		o0 := e.get(cOK)
		h.eventually(10*time.Second, "no read after the death", func() bool { return e.get(cOK) >= o0+100 })
		atomic.StoreUint64(&e.ctrs[cStop], 1)
		w.Wait(t, 20*time.Second)
		r.Wait(t, 20*time.Second)
		assert.Zero(t, e.get(cTorn), "torn values accepted")
	}
}

// TestCrashPoints walks every crash point, in both modes. A point without a
// row fails. In robust mode the kernel frees a dead holder's lock, so a
// waiter reaches the probe's points only on the safety net's path: a word the
// kernel did not mark.
// A Record reader that loaded the index of the published copy, and then
// stalled, while one writer published the other copy and the next one
// finished writing the reader's copy but died before publishing it (at
// RecordEven): the reader's copy is even and whole, but was never
// published. The reader must see that the index moved, and return the
// published value, not the one that never was.
func TestCrashPointsRecordUnpublished(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		h, e, path := newSeqHarness(t, mode)
		w, err := e.rec.Write(context.Background())
		require.NoError(t, err)
		require.NoError(t, w.Store(crashValue(1)))
		w.Commit()
		w.Release()
		atIndex, resume := make(chan struct{}), make(chan struct{})
		var once sync.Once
		fault.SetHook(fault.RecordReadIndex, func() { once.Do(func() { close(atIndex); <-resume }) })
		defer fault.SetHook(fault.RecordReadIndex, nil)
		got := make(chan []byte, 1)
		go func() {
			b := make([]byte, crashSize)
			if err := e.rec.Read(b); err != nil {
				panic(err)
			}
			got <- b
		}()
		<-atIndex
		h.spawnIn(path, nil, "crash-write-once", "2").Wait(t, 20*time.Second)
		diedAt(t, h.spawnIn(path, faultEnv(fault.RecordEven, 1), "crash-write-once", "3"), fault.RecordEven)
		close(resume)
		select {
		case b := <-got:
			assert.Equal(t, crashValue(2), b, "the reader returned a copy that was never published")
		case <-time.After(10 * time.Second):
			t.Fatal("the reader did not return")
		}
	})
}

func TestCrashPoints(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) { crashPoints(t, mode) })
}

func crashPoints(t *testing.T, mode shm.Mode) {
	probed := mutexRecoverer
	if mode == shm.ModeRobust {
		probed = mutexStuckRecoverer
	}
	rows := map[fault.Point]crashRow{
		fault.MutexAcquired:            mutexUnderLoad(10),
		fault.MutexBeforeRelease:       mutexUnderLoad(10),
		fault.MutexReleasedBeforeWake:  mutexUnderLoad(2),
		fault.MutexWaiterBeforeSleep:   mutexRecoverer,
		fault.MutexProberClaimed:       mutexRecoverer,
		fault.MutexReservedBeforeWake:  starvingUnderLoad(2),
		fault.MutexProberLeft:          mutexUnderLoad(2),
		fault.MutexProbedDead:          probed,
		fault.MutexRecovered:           probed,
		fault.MutexRecoveredAtDeadline: deadlineRecoverer,
		fault.MutexWaiterQuit:          quitterUnderLoad,
		fault.SeqWriteOdd:              writerUnderLoad("seq", 10),
		fault.SeqWriteMidData:          writerUnderLoad("seq", 10),
		fault.SeqReleaseState:          writerUnderLoad("seq", 10),
		fault.SeqReleaseEven:           writerUnderLoad("seq", 10),
		fault.SeqReaderTookOver:        seqReaderRecoverer,
		fault.SeqRepairDirty:           seqReaderRecoverer,
		fault.RecordOdd:                writerUnderLoad("rec", 10),
		fault.RecordCopied:             writerUnderLoad("rec", 10),
		fault.RecordMidData:            writerUnderLoad("rec", 10),
		fault.RecordEven:               writerUnderLoad("rec", 10),
		fault.RecordPublished:          writerUnderLoad("rec", 10),
		fault.RecordReadIndex:          readerUnderLoad(1000),
		fault.RWReaderAdded:            rwUnderLoad(50),
		fault.RWReaderDropped:          rwUnderLoad(3),
		fault.RWReaderShared:           rwUnderLoad(3),
		fault.RWReaderBeforeRelease:    rwUnderLoad(50),
		fault.RWWriterDraining:         rwUnderLoad(5),
		fault.RWWriterWaiting:          rwWaiter,
		fault.RWReaderProbedDead:       rwFreer,
		fault.RWReaderFreed:            rwFreer,
		fault.RegionCloseMarked:        closerDies,
		fault.RegionRetireSwept:        retirerDies,
		fault.RegionHeaderWritten:      creatorDies,
	}
	for _, p := range fault.All() {
		if strings.HasPrefix(p.String(), "cache-") {
			continue // examples/cache's TestCrashPoints has these
		}
		row, ok := rows[p]
		if !ok {
			t.Errorf("crash point %v has no row in this table", p)
			continue
		}
		t.Run(p.String(), func(t *testing.T) { row(t, p, mode) })
	}
}

// rwUnderLoad: the victim is one of three workers on an RWMutex, one write
// in four operations, and dies on its n-th pass through the point; the
// other two go on, and the counts stay exact.
func rwUnderLoad(n int) crashRow {
	return func(t *testing.T, p fault.Point, mode shm.Mode) {
		h := newRWHarness(t, 60*time.Second, mode)
		victim := h.Start(rwCommand(h, faultEnv(p, n), "0", "4"))
		a := h.spawn("rw-worker", "1", "4")
		b := h.spawn("rw-worker", "2", "4")
		diedAt(t, victim, p)
		h.rwGetThrough(t, a, b)
	}
}

// rwFreer: a reader dies holding a share; the victim, a writer, dies as it
// frees it (before or after its CAS); two workers must still get through,
// and the share is freed once: by the next writer, counted, or by the victim
// before it could count it.
func rwFreer(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newRWHarness(t, 60*time.Second, mode)
	reader := h.spawn("rw-read-hold")
	h.waitHeld()
	reader.Kill()
	victim := h.Start(rwCommand(h, faultEnv(p, 1), "0", "1"))
	diedAt(t, victim, p)
	a := h.spawn("rw-worker", "1", "4")
	b := h.spawn("rw-worker", "2", "4")
	h.rwGetThrough(t, a, b)
	want := 1
	if p == fault.RWReaderFreed {
		want = 0
	}
	assert.EqualValues(t, want, h.rw.Inspect().ReadersFreed, "the dead reader's share was freed twice, or never")
}

// rwWaiter: the victim, a writer, dies as it is about to sleep until a live
// reader drops its share; the reader is then killed too, and two workers
// must get through: the writers' lock of the dead writer is taken over, and
// the dead reader's share freed.
func rwWaiter(t *testing.T, p fault.Point, mode shm.Mode) {
	h := newRWHarness(t, 60*time.Second, mode)
	reader := h.spawn("rw-read-hold")
	h.waitHeld()
	victim := h.Start(rwCommand(h, faultEnv(p, 1), "0", "1"))
	diedAt(t, victim, p)
	reader.Kill()
	a := h.spawn("rw-worker", "1", "4")
	b := h.spawn("rw-worker", "2", "4")
	h.rwGetThrough(t, a, b)
	assert.EqualValues(t, 1, h.rw.Inspect().ReadersFreed)
}

func rwCommand(h *rwHarness, env []string, args ...string) *exec.Cmd {
	cmd := proctest.Command("rw-worker", append([]string{h.path}, args...)...)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// rwGetThrough checks that the workers make progress, stops them, and checks
// the counts, after a last write by this process (which repairs).
func (h *rwHarness) rwGetThrough(t *testing.T, workers ...*child) {
	t.Helper()
	a0 := h.load(rwA)
	proctest.Eventually(t, 10*time.Second, "no progress after the death", func() bool { return h.load(rwA) >= a0+100 })
	atomic.StoreUint64(&h.w[rwStop], 1)
	for _, c := range workers {
		c.Wait(t, 20*time.Second)
		require.NoError(t, c.Err, c.Output())
	}
	ctx, cancel := context.WithTimeout(context.Background(), recoveryBound)
	defer cancel()
	g, err := h.rw.Acquire(ctx)
	require.NoError(t, err, "the lock is wedged")
	if g.Recovered() {
		h.repair()
	}
	g.Commit()
	g.Release()
	assert.Zero(t, h.load(rwBad), "a reader beside a writer, or two writers")
	assert.Equal(t, h.load(rwA), h.load(rwB), "a write left half done")
	assert.Equal(t, h.sumMine(), h.load(rwA), "lost or double-counted writes")
}
