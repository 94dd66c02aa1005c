//go:build linux

package seqlock_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
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
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// The test region: a SeqLock, a Record, and a line of counters.
type env struct {
	r    *shm.Region
	seq  *seqlock.SeqLock
	rec  *seqlock.Record
	ctrs []uint64
	size int
	// the offsets of seq and rec
	seqOff, recOff int
}

// mutex inspects the writers' Mutex of the lock at off.
func (e *env) mutex(off int) shmlock.State {
	st, err := shmlock.Inspect(e.r, off)
	if err != nil {
		panic(err)
	}
	return st
}

const (
	ctrTornSeq  = iota // SeqLock reads accepted that failed verification
	ctrTornRec         // Record reads accepted that failed verification
	ctrOKSeq           // SeqLock reads verified
	ctrOKRec           // Record reads verified
	ctrDirtySeq        // SeqLock reads told ErrDirty
	ctrStop            // nonzero: stop
	ctrHanging         // a hanging writer is mid-write
	nCtrs
)

func layout(size int) (seqOff, recOff, ctrOff, total int) {
	seqOff = 0
	recOff = seqlock.SeqLockSize(size)
	ctrOff = recOff + seqlock.RecordSize(size)
	return seqOff, recOff, ctrOff, ctrOff + shm.LineSize
}

func open(path string, size int) (*env, error) {
	seqOff, recOff, ctrOff, total := layout(size)
	r, err := shm.Open(path, shm.Options{Size: total, Slots: 32})
	if err != nil {
		return nil, err
	}
	e := &env{r: r, size: size, seqOff: seqOff, recOff: recOff}
	if e.seq, err = seqlock.NewSeqLock(r, seqOff, size); err != nil {
		return nil, err
	}
	if e.rec, err = seqlock.NewRecord(r, recOff, size); err != nil {
		return nil, err
	}
	b, _ := r.Bytes(ctrOff, 8*nCtrs)
	e.ctrs = unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), nCtrs)
	return e, nil
}

func (e *env) add(c int) { atomic.AddUint64(&e.ctrs[c], 1) }

func (e *env) get(c int) uint64 { return atomic.LoadUint64(&e.ctrs[c]) }

// value fills a record from v: word 0 is v, word i is a mix of v and i, so a
// record made of words from two writes never verifies.
func value(v uint64, size int) []byte {
	b := make([]byte, size)
	for i := range size / 8 {
		binary.NativeEndian.PutUint64(b[8*i:], mix(v, i))
	}
	return b
}

func mix(v uint64, i int) uint64 {
	if i == 0 {
		return v
	}
	return (v+uint64(i))*0x9E3779B97F4A7C15 ^ uint64(i)<<32
}

func verify(b []byte) bool {
	v := binary.NativeEndian.Uint64(b)
	for i := 1; i < len(b)/8; i++ {
		if binary.NativeEndian.Uint64(b[8*i:]) != mix(v, i) {
			return false
		}
	}
	return true
}

func TestMain(m *testing.M) {
	proctest.Dispatch(map[string]func([]string) int{
		"writer": writer, "reader": reader, "hang-seq": hangSeq, "hang-rec": hangRec, "read-seq": readSeq,
	})
	os.Exit(m.Run())
}

func mustOpen(args []string) *env {
	size, _ := strconv.Atoi(args[1])
	e, err := open(args[0], size)
	if err != nil {
		panic(err)
	}
	return e
}

// writer writes both records word by word, slowly, so that kills land
// mid-write; each write is a new value, committed.
func writer(args []string) int {
	e := mustOpen(args)
	ctx := context.Background()
	for v := uint64(rand.Int64()); e.get(ctrStop) == 0; v++ {
		b := value(v, e.size)
		w, err := e.seq.Write(ctx)
		if err != nil {
			panic(err)
		}
		w.StoreAt(0, b[:16])
		time.Sleep(20 * time.Microsecond) // half written
		w.Store(b)                        // all of it: a dirty record turns clean
		w.Commit()
		w.Release()

		u, err := e.rec.Write(ctx)
		if err != nil {
			panic(err)
		}
		for i := 0; i < len(b); i += 8 {
			u.StoreAt(i, b[i:i+8])
			if i == 8 {
				time.Sleep(20 * time.Microsecond)
			}
		}
		u.Commit()
		u.Release()
	}
	return 0
}

// reader reads both records until told to stop and counts what it saw.
func reader(args []string) int {
	e := mustOpen(args)
	b := make([]byte, e.size)
	for e.get(ctrStop) == 0 {
		switch err := e.seq.Read(b); {
		case errors.Is(err, seqlock.ErrDirty):
			e.add(ctrDirtySeq)
		case err != nil:
			panic(err)
		case verify(b):
			e.add(ctrOKSeq)
		default:
			e.add(ctrTornSeq)
			fmt.Printf("torn SeqLock read: %x\n", b)
		}
		if err := e.rec.Read(b); err != nil {
			panic(err)
		}
		if verify(b) {
			e.add(ctrOKRec)
		} else {
			e.add(ctrTornRec)
			fmt.Printf("torn Record read: %x\n", b)
		}
	}
	return 0
}

// hangSeq starts a write, stores half a record, and hangs (to be killed).
func hangSeq(args []string) int {
	e := mustOpen(args)
	w, _ := e.seq.Write(context.Background())
	w.StoreAt(0, value(999, e.size)[:8])
	e.add(ctrHanging)
	select {}
}

func hangRec(args []string) int {
	e := mustOpen(args)
	u, _ := e.rec.Write(context.Background())
	u.StoreAt(0, value(999, e.size)[:8])
	e.add(ctrHanging)
	select {}
}

// readSeq reads the SeqLock once and prints the outcome.
func readSeq(args []string) int {
	e := mustOpen(args)
	b := make([]byte, e.size)
	err := e.seq.Read(b)
	fmt.Printf("err=%v verified=%v\n", err, verify(b))
	return 0
}

func newEnv(t *testing.T, size int) (*env, string) {
	path := fmt.Sprintf("%s/seqlock-test-%d-%s", shm.Dir, os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	os.Remove(path)
	e, err := open(path, size)
	require.NoError(t, err)
	t.Cleanup(func() { e.r.Close(); os.Remove(path) })
	return e, path
}

func (e *env) write(t *testing.T, v uint64) {
	w, err := e.seq.Write(context.Background())
	require.NoError(t, err)
	require.NoError(t, w.Store(value(v, e.size)))
	w.Commit()
	w.Release()
	u, err := e.rec.Write(context.Background())
	require.NoError(t, err)
	require.NoError(t, u.Store(value(v, e.size)))
	u.Commit()
	u.Release()
}

// Readers in two processes verify every value they accept while two writer
// processes write continuously and are SIGKILLed at random: no torn value is
// ever accepted; SeqLock readers are told of the dirty records the kills
// leave, and Record readers never see one.
func TestNoTornReadsUnderKills(t *testing.T) {
	// 64 bytes are copied word by word, 1,024 with one copy on amd64 (see
	// load).
	for _, size := range []int{64, 1024} {
		t.Run(strconv.Itoa(size)+"B", func(t *testing.T) { noTornReads(t, size, 1500*time.Millisecond) })
	}
}

func noTornReads(t *testing.T, size int, run time.Duration) {
	e, path := newEnv(t, size)
	h := proctest.New(t, 60*time.Second)
	e.write(t, 1)
	sz := strconv.Itoa(size)
	var readers []*proctest.Child
	for range 2 {
		readers = append(readers, h.Spawn("reader", path, sz))
	}
	writers := []*proctest.Child{h.Spawn("writer", path, sz), h.Spawn("writer", path, sz)}
	kills := 0
	for end := time.Now().Add(run); time.Now().Before(end); {
		time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
		i := rand.IntN(len(writers))
		writers[i].Kill()
		kills++
		writers[i] = h.Spawn("writer", path, sz)
	}
	atomic.StoreUint64(&e.ctrs[ctrStop], 1)
	for _, c := range append(readers, writers...) {
		c.Wait(t, 20*time.Second)
	}
	t.Logf("%d kills, %d writer recoveries; SeqLock: %d verified, %d dirty, %d torn; Record: %d verified, %d torn",
		kills, e.mutex(e.seqOff).Recoveries+e.mutex(e.recOff).Recoveries,
		e.get(ctrOKSeq), e.get(ctrDirtySeq), e.get(ctrTornSeq), e.get(ctrOKRec), e.get(ctrTornRec))
	assert.Zero(t, e.get(ctrTornSeq), "torn SeqLock values accepted")
	assert.Zero(t, e.get(ctrTornRec), "torn Record values accepted")
	assert.Positive(t, e.get(ctrOKSeq))
	assert.Positive(t, e.get(ctrOKRec))
	assert.Positive(t, e.get(ctrDirtySeq), "no kill landed mid-write: the test proved nothing")

	// Clean again after the next full write.
	atomic.StoreUint64(&e.ctrs[ctrStop], 0)
	e.write(t, 7)
	b := make([]byte, size)
	require.NoError(t, e.seq.Read(b))
	assert.Equal(t, value(7, size), b)
	require.NoError(t, e.rec.Read(b))
	assert.Equal(t, value(7, size), b)
}

// A writer killed mid-write, and no other writer ever comes: a reader still
// finishes, recovering the parity itself, and is told the record is dirty.
func TestDeadWriterReaderRecovers(t *testing.T) {
	const size = 64
	e, path := newEnv(t, size)
	h := proctest.New(t, 60*time.Second)
	e.write(t, 1)
	w := h.Spawn("hang-seq", path, strconv.Itoa(size))
	proctest.Eventually(t, 10*time.Second, "writer never started", func() bool { return e.get(ctrHanging) == 1 })
	w.Kill()
	out := h.Spawn("read-seq", path, strconv.Itoa(size)).Wait(t, 10*time.Second)
	assert.Contains(t, out, "err="+seqlock.ErrDirty.Error())
	assert.EqualValues(t, 1, e.mutex(e.seqOff).Recoveries, "the reader took the dead writer's lock over")
	assert.False(t, e.mutex(e.seqOff).Held, "and released it")

	// The next writer is not told again (the reader was), but it finds
	// the record dirty, and a partial write does not clean it.
	ww, err := e.seq.Write(context.Background())
	require.NoError(t, err)
	assert.False(t, ww.Recovered())
	assert.True(t, ww.Dirty())
	ww.StoreAt(8, []byte{1})
	ww.Commit()
	ww.Release()
	assert.ErrorIs(t, e.seq.Read(make([]byte, size)), seqlock.ErrDirty, "a partial write left it dirty")
	ww, err = e.seq.Write(context.Background())
	require.NoError(t, err)
	ww.Store(value(2, size))
	ww.Commit()
	ww.Release()
	b := make([]byte, size)
	require.NoError(t, e.seq.Read(b))
	assert.True(t, verify(b))
}

// A live writer stopped mid-write is not robbed by readers: they wait, and
// a reader with a deadline gives up.
func TestLiveWriterNotRobbedByReaders(t *testing.T) {
	const size = 64
	e, path := newEnv(t, size)
	h := proctest.New(t, 60*time.Second)
	w := h.Spawn("hang-seq", path, strconv.Itoa(size))
	proctest.Eventually(t, 10*time.Second, "writer never started", func() bool { return e.get(ctrHanging) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := e.seq.ReadContext(ctx, make([]byte, size))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Zero(t, e.mutex(e.seqOff).Recoveries)
	w.Kill()
}

// Record readers never wait for a writer, alive or dead, and keep the
// published value.
func TestRecordIgnoresStuckWriter(t *testing.T) {
	const size = 64
	e, path := newEnv(t, size)
	h := proctest.New(t, 60*time.Second)
	e.write(t, 5)
	w := h.Spawn("hang-rec", path, strconv.Itoa(size))
	proctest.Eventually(t, 10*time.Second, "writer never started", func() bool { return e.get(ctrHanging) == 1 })
	b := make([]byte, size)
	require.NoError(t, e.rec.Read(b), "while the writer is alive and mid-write")
	assert.Equal(t, value(5, size), b)
	w.Kill()
	require.NoError(t, e.rec.Read(b), "after it died")
	assert.Equal(t, value(5, size), b)
	u, err := e.rec.Write(context.Background())
	require.NoError(t, err)
	assert.True(t, u.Recovered())
	u.Load(b)
	assert.Equal(t, value(5, size), b, "the next writer starts from the published value")
	u.StoreAt(8, []byte{1, 2, 3})
	u.Commit()
	u.Release()
	require.NoError(t, e.rec.Read(b))
	assert.Equal(t, value(5, size)[:8], b[:8])
	assert.Equal(t, []byte{1, 2, 3}, b[8:11], "a partial update of the published value")
}

// A writer panics mid-write inside defer Release: the panic propagates, the
// lock is free, the SeqLock is dirty with an even sequence, the Record keeps
// its old value.
func TestWriterPanic(t *testing.T) {
	const size = 64
	e, _ := newEnv(t, size)
	e.write(t, 3)
	b := make([]byte, size)

	got := func() (r any) {
		defer func() { r = recover() }()
		w, err := e.seq.Write(context.Background())
		require.NoError(t, err)
		defer w.Release()
		w.StoreAt(0, value(4, size)[:16])
		panic("boom")
	}()
	assert.Equal(t, "boom", got)
	assert.ErrorIs(t, e.seq.Read(b), seqlock.ErrDirty, "parity restored, record dirty")
	assert.False(t, e.mutex(e.seqOff).Held, "lock free")

	got = func() (r any) {
		defer func() { r = recover() }()
		u, err := e.rec.Write(context.Background())
		require.NoError(t, err)
		defer u.Release()
		u.StoreAt(0, value(4, size)[:16])
		panic("boom")
	}()
	assert.Equal(t, "boom", got)
	require.NoError(t, e.rec.Read(b))
	assert.Equal(t, value(3, size), b, "the old value is kept")
	assert.False(t, e.mutex(e.recOff).Held, "lock free")

	// A later writer that stores only part of the record does not make
	// the half-written bytes clean.
	w, err := e.seq.Write(context.Background())
	require.NoError(t, err)
	assert.True(t, w.Dirty())
	w.StoreAt(56, value(5, size)[56:])
	w.Commit()
	w.Release()
	assert.ErrorIs(t, e.seq.Read(b), seqlock.ErrDirty, "partial commit after an abort")

	e.write(t, 8)
	require.NoError(t, e.seq.Read(b), "clean after a full write")
	assert.Equal(t, value(8, size), b)
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

// A copy of a Writer is a second handle on one write. Its Release, once
// that write ended and another began, panics with ErrNotHeld and writes
// nothing: the later write's sequence stays odd, its record unpublished.
func TestWriterCopyReleasesNothing(t *testing.T) {
	const size = 64
	e, _ := newEnv(t, size)
	e.write(t, 3)
	ctx := context.Background()
	w, err := e.seq.Write(ctx)
	require.NoError(t, err)
	stale := w
	w.Commit()
	w.Release()
	w2, err := e.seq.Write(ctx)
	require.NoError(t, err)
	stale.Commit()
	assertNotHeld(t, stale.Release)
	st, err := seqlock.Inspect(e.r, e.seqOff)
	require.NoError(t, err)
	assert.EqualValues(t, 1, st.Seq&1, "the later write is still open")
	assert.True(t, st.Writer.Held)
	assert.ErrorIs(t, stale.Store(value(9, size)), shmlock.ErrNotHeld, "a released Writer stores nothing")
	require.NoError(t, w2.Store(value(4, size)))
	w2.Commit()
	w2.Release()

	u, err := e.rec.Write(ctx)
	require.NoError(t, err)
	staleU := u
	u.Release()
	u2, err := e.rec.Write(ctx)
	require.NoError(t, err)
	require.NoError(t, u2.Store(value(5, size)))
	staleU.Commit()
	assertNotHeld(t, staleU.Release)
	b := make([]byte, size)
	require.NoError(t, e.rec.Read(b))
	assert.Equal(t, value(3, size), b, "the stale Writer published nothing")
	u2.Commit()
	u2.Release()
	require.NoError(t, e.rec.Read(b))
	assert.Equal(t, value(5, size), b)
}

// A Writer's hold is its attachment's as well as its generation's: once the
// 32-bit generation comes round to a stale copy's fence while another
// attachment writes (2^32-1 acquisitions, planted in the free word), the copy
// stores nothing and its Release leaves the other write open.
func TestWriterCopyAfterGenerationWrap(t *testing.T) {
	const size = 64
	e, path := newEnv(t, size)
	e.write(t, 3)
	e2, err := open(path, size) // a second attachment: another owner
	require.NoError(t, err)
	defer e2.r.Close()
	ctx := context.Background()
	w, err := e.seq.Write(ctx)
	require.NoError(t, err)
	stale := w
	w.Commit()
	w.Release()

	l, err := region.Of(e.r).Line(e.seqOff)
	require.NoError(t, err)
	require.Zero(t, atomic.LoadUint64(&l[0])&(1<<32-1), "free, nobody asleep")
	atomic.StoreUint64(&l[0], (stale.Fence()-1)<<32)
	w2, err := e2.seq.Write(ctx)
	require.NoError(t, err)
	require.Equal(t, stale.Fence(), w2.Fence(), "the generation came round")

	assert.ErrorIs(t, stale.Store(value(9, size)), shmlock.ErrNotHeld)
	stale.Commit()
	assertNotHeld(t, stale.Release)
	st, err := seqlock.Inspect(e.r, e.seqOff)
	require.NoError(t, err)
	assert.EqualValues(t, 1, st.Seq&1, "the other write is still open")
	require.NoError(t, w2.Store(value(4, size)))
	w2.Commit()
	w2.Release()
	b := make([]byte, size)
	require.NoError(t, e.seq.Read(b))
	assert.Equal(t, value(4, size), b)
}

// Writing and reading allocate nothing: Write returns its Writer by value.
func TestWriteDoesNotAllocate(t *testing.T) {
	const size = 64
	e, _ := newEnv(t, size)
	ctx := context.Background()
	v, b := value(1, size), make([]byte, size)
	for name, f := range map[string]func(context.Context) (seqlock.Writer, error){
		"SeqLock": e.seq.Write, "Record": e.rec.Write,
	} {
		assert.Zero(t, testing.AllocsPerRun(100, func() { write(ctx, f, v) }), name+" write")
	}
	assert.Zero(t, testing.AllocsPerRun(100, func() { e.seq.Read(b) }), "SeqLock read")
	assert.Zero(t, testing.AllocsPerRun(100, func() { e.rec.Read(b) }), "Record read")
}

func TestSizes(t *testing.T) {
	for _, size := range []int{8, 64, 4096} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			e, _ := newEnv(t, size)
			e.write(t, uint64(size))
			b := make([]byte, size)
			require.NoError(t, e.seq.Read(b))
			assert.Equal(t, value(uint64(size), size), b)
			require.NoError(t, e.rec.Read(b))
			assert.Equal(t, value(uint64(size), size), b)
			assert.ErrorIs(t, e.seq.Read(make([]byte, size+8)), seqlock.ErrSize)
			assert.ErrorIs(t, e.rec.Read(b[:size-8]), seqlock.ErrSize)
		})
	}
	e, _ := newEnv(t, 64)
	for _, n := range []int{0, -8, 12, 63} {
		_, err := seqlock.NewSeqLock(e.r, 0, n)
		assert.ErrorIs(t, err, seqlock.ErrSize, "size %d", n)
		_, err = seqlock.NewRecord(e.r, 0, n)
		assert.ErrorIs(t, err, seqlock.ErrSize, "size %d", n)
	}
	_, err := seqlock.NewSeqLock(e.r, 0, 1<<20)
	assert.ErrorIs(t, err, shm.ErrInvalid, "larger than the region")
}

// A constructor refused for its size writes nothing: no tag is left behind.
func TestRefusedConstructorPlacesNothing(t *testing.T) {
	r, err := shm.Open(filepath.Join(t.TempDir(), "region"), shm.Options{Size: 4096})
	require.NoError(t, err)
	defer r.Close()
	_, err = seqlock.NewRecord(r, 0, 4096)
	assert.ErrorIs(t, err, shm.ErrInvalid, "larger than the region")
	_, err = seqlock.NewSeqLock(r, 0, region.MaxPlacedSize+8)
	assert.ErrorIs(t, err, seqlock.ErrSize)
	assert.Empty(t, region.Of(r).Placements())
}

// A Record whose published copy stays odd (both copies odd: written so from
// outside, since no writer leaves the published copy odd) is reported
// corrupt instead of read for ever; the next update repairs it.
func TestRecordCorrupt(t *testing.T) {
	r, err := shm.Open(filepath.Join(t.TempDir(), "region"), shm.Options{Size: 4096})
	require.NoError(t, err)
	defer r.Close()
	rec, err := seqlock.NewRecord(r, 0, 64)
	require.NoError(t, err)
	line, _ := region.Of(r).Line(0)
	atomic.StoreUint64(&line[5], 1) // the copies' sequences (words 5 and 6)
	atomic.StoreUint64(&line[6], 1)
	b := make([]byte, 64)
	done := make(chan error, 1)
	go func() { done <- rec.Read(b) }()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, seqlock.ErrCorrupt)
	case <-time.After(10 * time.Second):
		t.Fatal("Read of a corrupt record never returned")
	}
	u, err := rec.Write(context.Background())
	require.NoError(t, err)
	require.NoError(t, u.Store(bytes.Repeat([]byte{7}, 64)))
	u.Commit()
	u.Release()
	require.NoError(t, rec.Read(b))
	assert.Equal(t, bytes.Repeat([]byte{7}, 64), b)
}

// A reader waiting on a live writer's open write, about to try to recover it
// when Close begins, returns ErrClosed: it is stopped there until Close has
// begun (Close waits for it).
func TestCloseDuringReaderRecovery(t *testing.T) {
	h := proctest.New(t, 60*time.Second)
	const size = 64
	path := filepath.Join(t.TempDir(), "region")
	e, err := open(path, size)
	require.NoError(t, err)
	w := h.Spawn("hang-seq", path, strconv.Itoa(size))
	defer w.Kill()
	proctest.Eventually(t, 10*time.Second, "writer never started", func() bool { return e.get(ctrHanging) == 1 })
	stopped, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	seqlock.SetReadHook(func() { once.Do(func() { close(stopped); <-release }) })
	defer seqlock.SetReadHook(nil)
	read := make(chan error, 1)
	go func() { read <- e.seq.Read(make([]byte, size)) }()
	<-stopped
	closed := make(chan error, 1)
	go func() { closed <- e.r.Close() }()
	time.Sleep(50 * time.Millisecond) // Close has begun, and waits for the reader
	close(release)
	assert.ErrorIs(t, <-read, shm.ErrClosed)
	require.NoError(t, <-closed)
}
