//go:build linux

package cache_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/internal/owner"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

func TestMain(m *testing.M) {
	proctest.Dispatch(map[string]func([]string) int{
		"writer": writer, "reader": reader, "bench": benchChild,
	})
	os.Exit(m.Run())
}

var opts = cache.Options{Capacity: 256, MaxKey: 16, MaxValue: 200}

const keys = 300 // more keys than slots: evictions happen

func key(k uint64) []byte { return []byte("key-" + strconv.FormatUint(k, 10)) }

// value makes the value that version ver of key k holds: its length, filler
// and checksum all depend on both, so that bytes from two different writes
// never pass check.
func value(k, ver uint64) []byte {
	n := 24 + int((k*7+ver*13)%uint64(opts.MaxValue-24+1))
	v := make([]byte, n)
	binary.LittleEndian.PutUint64(v[0:], k)
	binary.LittleEndian.PutUint64(v[8:], ver)
	var sum uint64
	for i := 24; i < n; i++ {
		v[i] = byte(k*31 + ver*17 + uint64(i))
		sum = sum*131 + uint64(v[i])
	}
	binary.LittleEndian.PutUint64(v[16:], sum^k^ver)
	return v
}

// check says what is wrong with v as a value of key k, if anything.
func check(k uint64, v []byte) error {
	if len(v) < 24 {
		return fmt.Errorf("key %d: %d-byte value", k, len(v))
	}
	if got := binary.LittleEndian.Uint64(v); got != k {
		return fmt.Errorf("key %d: value of key %d", k, got)
	}
	ver := binary.LittleEndian.Uint64(v[8:])
	if want := value(k, ver); string(want) != string(v) {
		return fmt.Errorf("key %d: torn value (version %d, %d bytes, want %d)", k, ver, len(v), len(want))
	}
	return nil
}

// The control region of the kill test: stop, and counters.
const (
	cStop = iota
	cReads
	cHits
	cBad
	cSets
	cWords
)

type ctl struct {
	r *shm.Region
	w []uint64
}

func openCtl(path string) (*ctl, error) {
	r, err := shm.Open(path, shm.Options{Size: 8 * cWords})
	if err != nil {
		return nil, err
	}
	b, _ := r.Bytes(0, 8*cWords)
	return &ctl{r: r, w: unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), cWords)}, nil
}

func (c *ctl) stopped() bool { return atomic.LoadUint64(&c.w[cStop]) != 0 }

// openChild opens, in a child, the cache args[0] and the control region
// args[1].
func openChild(args []string) (*cache.Cache, *ctl, error) {
	c, err := cache.Open(args[0], opts)
	if err != nil {
		return nil, nil, err
	}
	x, err := openCtl(args[1])
	return c, x, err
}

// writer: args cache, ctl, index. Sets random keys to new versions, some with
// a short TTL, until stopped.
func writer(args []string) int {
	c, x, err := openChild(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	i, _ := strconv.Atoi(args[2])
	ctx := context.Background()
	for n := uint64(1); !x.stopped(); n++ {
		k := rand.Uint64N(keys)
		ttl := time.Duration(0)
		if k%5 == 0 {
			ttl = 30 * time.Millisecond
		}
		ver := n<<8 | uint64(i)
		if k%11 == 0 {
			err = c.Delete(ctx, key(k))
		} else {
			err = c.Set(ctx, key(k), value(k, ver), ttl)
		}
		if err != nil {
			fmt.Println(err)
			return 1
		}
		atomic.AddUint64(&x.w[cSets], 1)
	}
	return 0
}

// reader: args cache, ctl. Gets random keys and checks every value.
func reader(args []string) int {
	c, x, err := openChild(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	buf := make([]byte, 0, opts.MaxValue)
	for !x.stopped() {
		k := rand.Uint64N(keys)
		v, ok := c.Get(key(k), buf[:0])
		atomic.AddUint64(&x.w[cReads], 1)
		if ok {
			atomic.AddUint64(&x.w[cHits], 1)
			if err := check(k, v); err != nil {
				if atomic.AddUint64(&x.w[cBad], 1) <= 5 {
					fmt.Println(err)
				}
			}
		}
	}
	return 0
}

func paths(t *testing.T) (string, string) {
	dir := t.TempDir()
	return filepath.Join(dir, "cache"), filepath.Join(dir, "ctl")
}

// Several processes hammer one cache while writers are SIGKILLed, most of
// them holding the writers' lock in the middle of a Set: every value any
// reader gets is one that a Set stored whole, and the cache never wedges.
func TestKilledWritersNeverTearOrWedge(t *testing.T) {
	const writers, readers, kills = 3, 2, 60
	h := proctest.New(t, 120*time.Second)
	cpath, xpath := paths(t)
	c, err := cache.Open(cpath, opts)
	require.NoError(t, err)
	defer c.Close()
	x, err := openCtl(xpath)
	require.NoError(t, err)
	defer x.r.Close()

	ws := make([]*proctest.Child, writers)
	for i := range ws {
		ws[i] = h.Spawn("writer", cpath, xpath, strconv.Itoa(i))
	}
	var rs []*proctest.Child
	for range readers {
		rs = append(rs, h.Spawn("reader", cpath, xpath))
	}
	proctest.Eventually(t, 10*time.Second, "no Set completed", func() bool { return atomic.LoadUint64(&x.w[cSets]) > 100 })

	holding := 0
	for range kills {
		time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
		// Prefer a writer caught holding the writers' lock: stop one,
		// look, and kill it if it holds (or after enough tries, wherever
		// it is).
		i := rand.IntN(writers)
		for try := 0; ; try++ {
			pid := ws[i].Pid()
			syscall.Kill(pid, syscall.SIGSTOP)
			waitStopped(t, pid)
			if s := c.Writers(); s.Held && int(s.Holder.PID) == pid {
				holding++
				break
			}
			if try == 50 {
				break
			}
			syscall.Kill(pid, syscall.SIGCONT)
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		ws[i].Kill()
		ws[i] = h.Spawn("writer", cpath, xpath, strconv.Itoa(i))
	}
	setsAtLastKill := atomic.LoadUint64(&x.w[cSets])
	proctest.Eventually(t, 10*time.Second, "writers made no progress after the last kill (wedged?)", func() bool {
		return atomic.LoadUint64(&x.w[cSets]) > setsAtLastKill+100
	})
	atomic.StoreUint64(&x.w[cStop], 1)
	for _, p := range append(ws, rs...) {
		p.Wait(t, 20*time.Second)
		assert.NoError(t, p.Err, p.Output())
	}

	reads, hits, bad := atomic.LoadUint64(&x.w[cReads]), atomic.LoadUint64(&x.w[cHits]), atomic.LoadUint64(&x.w[cBad])
	t.Logf("%d kills (%d holding the writers' lock), %d sets, %d reads (%d hits) checked, %d bad; writers' lock recovered %d times",
		kills, holding, atomic.LoadUint64(&x.w[cSets]), reads, hits, bad, c.Recoveries())
	assert.Zero(t, bad, "a reader was handed a value no Set stored whole")
	assert.Greater(t, holding, kills/2, "too few kills landed while holding for the test to mean much")
	assert.GreaterOrEqual(t, c.Recoveries(), uint64(holding), "every holder killed was taken over")
	assert.Greater(t, hits, uint64(1000))

	// And this process can still write and read every key.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for k := range uint64(keys) {
		require.NoError(t, c.Set(ctx, key(k), value(k, 1), 0))
	}
	for k := range uint64(keys) {
		if v, ok := c.Get(key(k), nil); ok {
			require.NoError(t, check(k, v))
		}
	}
}

func waitStopped(t *testing.T, pid int) {
	proctest.Eventually(t, 5*time.Second, "a writer did not stop", func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true // gone: nothing to wait for
		}
		st, err := owner.ParseStat(b)
		return err == nil && st.State == 'T'
	})
}

// smallCache opens a fresh cache of 8 slots, 8-byte keys and 16-byte values,
// closed when the test ends, and returns it with its path.
func smallCache(t *testing.T) (*cache.Cache, string) {
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, cache.Options{Capacity: 8, MaxKey: 8, MaxValue: 16})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, cpath
}

// One process: set, get, overwrite, delete, expiry, eviction, limits.
func TestCache(t *testing.T) {
	c, cpath := smallCache(t)
	ctx := context.Background()
	get := func(k string) string {
		v, ok := c.Get([]byte(k), nil)
		if !ok {
			return "<miss>"
		}
		return string(v)
	}
	require.NoError(t, c.Set(ctx, []byte("a"), []byte("1"), 0))
	require.NoError(t, c.Set(ctx, []byte("b"), []byte(""), 0))
	assert.Equal(t, "1", get("a"))
	assert.Equal(t, "", get("b"), "an empty value is a hit")
	assert.Equal(t, "<miss>", get("c"))
	require.NoError(t, c.Set(ctx, []byte("a"), []byte("22"), 0))
	assert.Equal(t, "22", get("a"), "overwritten in place")
	require.NoError(t, c.Delete(ctx, []byte("a")))
	assert.Equal(t, "<miss>", get("a"))

	require.NoError(t, c.Set(ctx, []byte("t"), []byte("soon gone"), 20*time.Millisecond))
	assert.Equal(t, "soon gone", get("t"))
	time.Sleep(30 * time.Millisecond)
	assert.Equal(t, "<miss>", get("t"), "expired")

	// More keys than slots: the cache stays full and correct.
	for i := range 50 {
		k := strconv.Itoa(i)
		require.NoError(t, c.Set(ctx, []byte(k), []byte("v"+k), 0))
		assert.Equal(t, "v"+k, get(k), "the key just set is there")
	}
	present := 0
	for i := range 50 {
		k := strconv.Itoa(i)
		if v := get(k); v != "<miss>" {
			present++
			assert.Equal(t, "v"+k, v)
		}
	}
	assert.LessOrEqual(t, present, 8)

	assert.ErrorIs(t, c.Set(ctx, []byte("too long a key"), nil, 0), cache.ErrTooLong)
	assert.ErrorIs(t, c.Set(ctx, []byte("k"), make([]byte, 17), 0), cache.ErrTooLong)
	_, ok := c.Get([]byte("too long a key"), nil)
	assert.False(t, ok)

	// Another process's view with other dimensions is refused, typed.
	_, err := cache.Open(cpath, cache.Options{Capacity: 4, MaxKey: 8, MaxValue: 16})
	assert.True(t, errors.Is(err, cache.ErrMismatch), "%v", err)
}

// A TTL that runs past the year 2262 does not wrap into the past.
func TestLongTTL(t *testing.T) {
	c, _ := smallCache(t)
	require.NoError(t, c.Set(context.Background(), []byte("k"), []byte("v"), math.MaxInt64))
	_, ok := c.Get([]byte("k"), nil)
	assert.True(t, ok)
}

// Slots whose bytes were changed from outside (both copies of every Record
// left half written) make Get miss, not hang, and the next Set repairs them.
func TestCorruptSlots(t *testing.T) {
	c, _ := smallCache(t)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, []byte("k"), []byte("v"), 0))
	for _, p := range region.Of(c.Region()).Placements() {
		if p.Kind == region.KindRecord {
			l, _ := region.Of(c.Region()).Line(p.Off)
			atomic.StoreUint64(&l[5], 1) // both copies' sequences odd
			atomic.StoreUint64(&l[6], 1)
		}
	}
	done := make(chan bool, 1)
	go func() { _, ok := c.Get([]byte("k"), nil); done <- ok }()
	select {
	case ok := <-done:
		assert.False(t, ok, "a corrupt slot holds nothing to trust")
	case <-time.After(10 * time.Second):
		t.Fatal("Get hung on corrupt slots")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, c.Set(ctx, []byte("k"), []byte("again"), 0))
	v, ok := c.Get([]byte("k"), nil)
	assert.True(t, ok)
	assert.Equal(t, "again", string(v))
}

// Opening a cache on a region that holds something else is refused before
// anything is written to it.
func TestOpenForeignRegion(t *testing.T) {
	cpath, _ := paths(t)
	opt := cache.Options{Capacity: 4, MaxKey: 8, MaxValue: 8}
	r, err := shm.Open(cpath, shm.Options{Size: opt.Size()})
	require.NoError(t, err)
	defer r.Close()
	rec, err := seqlock.NewRecord(r, 0, 64)
	require.NoError(t, err)
	u, err := rec.Write(context.Background())
	require.NoError(t, err)
	u.Store(make([]byte, 64))
	u.Commit()
	u.Release()
	before := region.Of(r).Placements()
	_, err = cache.Open(cpath, opt)
	assert.ErrorIs(t, err, cache.ErrMismatch)
	assert.Equal(t, before, region.Of(r).Placements(), "the refused Open placed a lock")
	b := make([]byte, 64)
	require.NoError(t, rec.Read(b))
	assert.Equal(t, make([]byte, 64), b, "the refused Open changed the Record")
}
