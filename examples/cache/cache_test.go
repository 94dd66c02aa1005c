//go:build linux

package cache_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
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
		"writer": writer, "reader": reader, "bench": benchChild, "paced-writer": pacedWriter,
		"hot-writer": hotWriter, "churn-writer": churnWriter, "churn-reader": churnReader,
		"neighbor-writer": neighborWriter, "inspect-loop": inspectLoop, "truncator": truncator, "ttl-victim": ttlVictim,
		"scribbler": scribbler, "close-getter": closeGetter, "lock-getter": lockGetter,
	})
	os.Exit(m.Run())
}

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

// The kill test's cache and keys. Keys below lossless are written without a
// TTL, into a cache large enough that none is evicted: for them a miss is
// checked too. The rest expire after 30 ms.
var opts = cache.Options{Capacity: 4096, MaxKey: 16, MaxValue: 200, Shards: 64}

const (
	lossless = 512
	keys     = 768
	writers  = 3 // key k is written only by writer k % writers
)

func ttlOf(k uint64) time.Duration {
	if k >= lossless {
		return 30 * time.Millisecond
	}
	return 0
}

// isDelete says whether the ver-th operation on key k is a Delete (else a
// Set of value(k, ver)).
func isDelete(k, ver uint64) bool { return (k+ver)%7 == 0 }

// The control region of the kill test: stop and counters, then each key's
// last version begun (next) and last version done.
const (
	cStop = iota
	cReads
	cHits
	cBad   // torn values
	cStale // values older than the last completed write, or resurrected after a Delete
	cLost  // misses of a lossless key that a completed Set holds
	cSets
	cWords
	cNext = 16
	cDone = cNext + keys
	cSize = cDone + keys
)

type ctl struct {
	r *shm.Region
	w []uint64
}

func openCtl(path string) (*ctl, error) {
	r, err := shm.Open(path, shm.Options{Size: 8 * cSize})
	if err != nil {
		return nil, err
	}
	b, _ := r.Bytes(0, 8*cSize)
	return &ctl{r: r, w: unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), cSize)}, nil
}

func (c *ctl) stopped() bool { return atomic.LoadUint64(&c.w[cStop]) != 0 }

// report counts one bad read, and prints the first few.
func (c *ctl) report(ctr int, err error) {
	if atomic.AddUint64(&c.w[ctr], 1) <= 5 {
		fmt.Println(err)
	}
}

// openChild opens, in a child, the cache args[0] in mode args[2], of
// capacity args[3], and the control region args[1].
func openChild(args []string) (*cache.Cache, *ctl, error) {
	o := opts
	m, _ := strconv.Atoi(args[2])
	o.Region.Mode = shm.Mode(m)
	o.Capacity, _ = strconv.Atoi(args[3])
	c, err := cache.Open(args[0], o)
	if err != nil {
		return nil, nil, err
	}
	x, err := openCtl(args[1])
	return c, x, err
}

// writer: args cache, ctl, mode, capacity, index. Sets and deletes its keys, each at
// its next version, until stopped.
func writer(args []string) int {
	c, x, err := openChild(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	i, _ := strconv.Atoi(args[4])
	ctx := context.Background()
	for !x.stopped() {
		k := uint64(rand.IntN(keys/writers))*writers + uint64(i)
		// A writer killed with a version begun leaves it begun: it did
		// or did not happen, and the next one goes on from it.
		if err := x.write(ctx, c, k, ttlOf(k)); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	return 0
}

// write does the next version of key k, a Delete or a Set for ttl, and
// records it begun, then done.
func (x *ctl) write(ctx context.Context, c *cache.Cache, k uint64, ttl time.Duration) error {
	ver := atomic.LoadUint64(&x.w[cNext+k]) + 1
	atomic.StoreUint64(&x.w[cNext+k], ver)
	var err error
	if isDelete(k, ver) {
		err = c.Delete(ctx, key(k))
	} else {
		err = c.Set(ctx, key(k), value(k, ver), ttl)
	}
	if err != nil {
		return err
	}
	atomic.StoreUint64(&x.w[cDone+k], ver)
	atomic.AddUint64(&x.w[cSets], 1)
	return nil
}

// reader: args cache, ctl, mode, capacity. Gets random keys and checks
// every answer against the versions done before the Get began and begun
// once it ended; misses too, in a cache of opts.Capacity, which evicts none.
func reader(args []string) int {
	c, x, err := openChild(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	buf := make([]byte, 0, opts.MaxValue)
	lossless := uint64(lossless)
	if args[3] != strconv.Itoa(opts.Capacity) {
		lossless = 0
	}
	for !x.stopped() {
		k := rand.Uint64N(keys)
		x.read(c, k, buf, k < lossless)
	}
	return 0
}

// read Gets key k and checks the answer against the versions done before
// the Get began and begun once it ended: whole, fresh, and, if lossless, not
// missed. It returns the version read, if the value was whole.
func (x *ctl) read(c *cache.Cache, k uint64, buf []byte, lossless bool) (uint64, bool) {
	done := atomic.LoadUint64(&x.w[cDone+k])
	v, ok := c.Get(key(k), buf[:0])
	next := atomic.LoadUint64(&x.w[cNext+k])
	atomic.AddUint64(&x.w[cReads], 1)
	if !ok {
		if lossless {
			if err := mayMiss(k, done, next); err != nil {
				x.report(cLost, err)
			}
		}
		return 0, false
	}
	atomic.AddUint64(&x.w[cHits], 1)
	if err := check(k, v); err != nil {
		x.report(cBad, err)
		return 0, false
	}
	if err := fresh(k, v, done, next); err != nil {
		x.report(cStale, err)
	}
	return binary.LittleEndian.Uint64(v[8:]), true
}

// fresh says what is wrong with v, a whole value of key k, if the last
// version done on k before the Get was done and the last begun after it
// was next: v must be a Set's, no older than done, and no newer than next;
// after a Delete done, it must be a later Set's.
func fresh(k uint64, v []byte, done, next uint64) error {
	ver := binary.LittleEndian.Uint64(v[8:])
	switch {
	case isDelete(k, ver) || ver > next:
		return fmt.Errorf("key %d: version %d was never set (versions begun: %d)", k, ver, next)
	case ver < done:
		return fmt.Errorf("key %d: version %d read after version %d was done (resurrected, if that was a Delete)", k, ver, done)
	}
	return nil
}

// mayMiss says what is wrong with a miss of lossless key k: none unless
// nothing was done on it yet, or a Delete was the last done or one began
// since.
func mayMiss(k, done, next uint64) error {
	if done == 0 {
		return nil
	}
	for ver := done; ver <= next; ver++ {
		if isDelete(k, ver) {
			return nil
		}
	}
	return fmt.Errorf("key %d: missing, though version %d was set, and versions up to %d begun since are Sets", k, done, next)
}

func paths(t *testing.T) (string, string) {
	dir := t.TempDir()
	return filepath.Join(dir, "cache"), filepath.Join(dir, "ctl")
}

// Writers and readers in several processes share one cache while writers
// are SIGKILLed, most of them holding a shard's lock in the middle of a Set
// or Delete, on whichever of the 64 shards: every value read is one a Set
// stored whole, none is older than the last write done before the read
// began, none comes back after a Delete, no lossless key goes missing, and
// no shard wedges. At the end every key holds what its last write left.
func TestKilledWritersNeverTearOrWedge(t *testing.T) {
	for _, mode := range []shm.Mode{shm.ModeRobust, shm.ModeProbe} {
		t.Run(mode.String(), func(t *testing.T) { killWriters(t, mode, 100) })
	}
}

// fits reports whether no bucket of c has more of the kill test's keys than
// it has ways.
func fits(c *cache.Cache) bool {
	in := map[int]int{}
	for k := range uint64(keys) {
		if in[cache.BucketOf(c, key(k))]++; in[cache.BucketOf(c, key(k))] > cache.Ways {
			return false
		}
	}
	return true
}

// world is a kill test's cache, control region and children.
type world struct {
	h            *proctest.Harness
	c            *cache.Cache
	x            *ctl
	cpath, xpath string
	args         []string // mode, capacity
	ws, rs       []*proctest.Child
}

// newWorld opens a cache of capacity entries in mode, and starts the
// writers (but writer 0, if the caller starts it) and two readers.
func newWorld(t *testing.T, mode shm.Mode, capacity int, noWriter0 bool) *world {
	w := &world{h: proctest.New(t, 120*time.Second)}
	w.cpath, w.xpath = paths(t)
	o := opts
	o.Region.Mode, o.Capacity = mode, capacity
	var err error
	// The hash is seeded anew with each region: make regions until no
	// bucket is asked to hold more keys than it has ways, so that a key
	// evicted is the cache's fault, not the seed's.
	for try := 0; ; try++ {
		w.c, err = cache.Open(w.cpath, o)
		require.NoError(t, err)
		if capacity != opts.Capacity || fits(w.c) {
			break
		}
		require.Less(t, try, 50, "no seed fits the keys in the buckets")
		w.c.Close()
		require.NoError(t, os.Remove(w.cpath))
	}
	t.Cleanup(func() { w.c.Close() })
	w.x, err = openCtl(w.xpath)
	require.NoError(t, err)
	t.Cleanup(func() { w.x.r.Close() })
	w.args = []string{w.cpath, w.xpath, strconv.Itoa(int(mode)), strconv.Itoa(capacity)}
	w.ws = make([]*proctest.Child, writers)
	for i := range w.ws {
		if i > 0 || !noWriter0 {
			w.ws[i] = w.spawnWriter(i)
		}
	}
	for range 2 {
		w.rs = append(w.rs, w.h.Spawn("reader", w.args...))
	}
	return w
}

func (w *world) spawnWriter(i int) *proctest.Child {
	return w.h.Spawn("writer", append(w.args, strconv.Itoa(i))...)
}

func (w *world) writes() uint64 { return atomic.LoadUint64(&w.x.w[cSets]) }

// finish waits for the writers to make progress, stops every child, and
// checks every read they made, and then every key.
func (w *world) finish(t *testing.T) {
	n, r := w.writes(), atomic.LoadUint64(&w.x.w[cHits])
	proctest.Eventually(t, 10*time.Second, "writers made no progress (wedged?)", func() bool { return w.writes() > n+1000 })
	proctest.Eventually(t, 10*time.Second, "readers made no progress", func() bool { return atomic.LoadUint64(&w.x.w[cHits]) > r+1000 })
	atomic.StoreUint64(&w.x.w[cStop], 1)
	for _, p := range append(w.ws, w.rs...) {
		p.Wait(t, 20*time.Second)
		assert.NoError(t, p.Err, p.Output())
	}
	x := w.x
	assert.Zero(t, x.w[cBad], "a reader was handed a value no Set stored whole")
	assert.Zero(t, x.w[cStale], "a reader was handed a value older than a write done before it began")
	assert.Zero(t, x.w[cLost], "a lossless key went missing")
	assert.Greater(t, x.w[cHits], uint64(1000))
	// Every key holds what its last write left, or, if its writer died
	// in it, what the write before left; and this process can still write
	// every key.
	for k := range uint64(keys) {
		v, ok := w.c.Get(key(k), nil)
		done, next := x.w[cDone+k], x.w[cNext+k]
		if ok {
			assert.NoError(t, check(k, v))
			assert.NoError(t, fresh(k, v, done, next))
		} else if k < lossless && w.args[3] == strconv.Itoa(opts.Capacity) {
			assert.NoError(t, mayMiss(k, done, next))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for k := range uint64(keys) {
		require.NoError(t, w.c.Set(ctx, key(k), value(k, 1), 0))
		v, ok := w.c.Get(key(k), nil)
		require.True(t, ok)
		require.NoError(t, check(k, v))
	}
}

func killWriters(t *testing.T, mode shm.Mode, kills int) {
	w := newWorld(t, mode, opts.Capacity, false)
	c, x := w.c, w.x
	proctest.Eventually(t, 10*time.Second, "no Set completed", func() bool { return w.writes() > 100 })
	holding, shards := 0, map[int]bool{}
	for range kills {
		time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
		// Prefer a writer caught holding a shard's lock: stop one, look,
		// and kill it if it holds (or after enough tries, wherever it is).
		i := rand.IntN(writers)
		for try := 0; ; try++ {
			pid := w.ws[i].Pid()
			syscall.Kill(pid, syscall.SIGSTOP)
			waitStopped(t, pid)
			if s := heldBy(c, pid); s >= 0 {
				holding++
				shards[s] = true
				break
			}
			if try == 50 {
				break
			}
			syscall.Kill(pid, syscall.SIGCONT)
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		w.ws[i].Kill()
		w.ws[i] = w.spawnWriter(i)
	}
	w.finish(t)
	st := c.Stats()
	t.Logf("%d kills (%d holding a shard's lock, on %d shards), %d writes, %d reads (%d hits) checked, %d torn, %d stale, %d lost; %+v",
		kills, holding, len(shards), w.writes(), x.w[cReads], x.w[cHits], x.w[cBad], x.w[cStale], x.w[cLost], st)
	assert.Zero(t, st.Evictions, "an eviction: the lossless keys' check means nothing")
	assert.Greater(t, holding, kills/2, "too few kills landed while holding for the test to mean much")
	assert.Greater(t, len(shards), 1, "every kill landed on one shard")
	// The locks count their recoveries; Stats counts those its writers
	// were told of, less any whose taker was itself killed before it
	// counted.
	var recoveries uint64
	for _, s := range c.Writers() {
		recoveries += s.Recoveries
	}
	assert.GreaterOrEqual(t, recoveries, uint64(holding), "every holder killed was taken over")
	assert.LessOrEqual(t, st.Takeovers, recoveries, "more takeovers counted than the locks recovered")
	assert.Greater(t, st.Expirations, uint64(0), "no expired entry was replaced")
}

// heldBy returns the shard whose lock process pid holds, or -1.
func heldBy(c *cache.Cache, pid int) int {
	for i, s := range c.Writers() {
		if s.Held && int(s.Holder.PID) == pid {
			return i
		}
	}
	return -1
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
	_, err := cache.Open(cpath, cache.Options{Capacity: 16, MaxKey: 8, MaxValue: 16})
	assert.True(t, errors.Is(err, cache.ErrMismatch), "%v", err)
}

// A TTL that runs past the year 2262 does not wrap into the past.
func TestLongTTL(t *testing.T) {
	c, _ := smallCache(t)
	require.NoError(t, c.Set(context.Background(), []byte("k"), []byte("v"), math.MaxInt64))
	_, ok := c.Get([]byte("k"), nil)
	assert.True(t, ok)
}

// Buckets and entries changed from outside the cache's writers make Get
// miss, not hang or return what they hold, and the next Set repairs them:
// a map whose ways name one entry twice, or none (15 XOR the way); an entry
// whose sequence stays odd; lengths past the cache's limits.
func TestCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(bk, en []uint64)
	}{
		{"map", func(bk, _ []uint64) { atomic.StoreUint64(&bk[0], ^uint64(0)); atomic.StoreUint64(&bk[1], ^uint64(0)) }},
		{"odd", func(_, en []uint64) { atomic.StoreUint64(&en[0], 7) }},
		{"key length", func(_, en []uint64) { atomic.StoreUint64(&en[4], 1<<40|9) }},
		{"value length", func(_, en []uint64) { atomic.StoreUint64(&en[4], 1<<40|1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := smallCache(t)
			ctx := context.Background()
			require.NoError(t, c.Set(ctx, []byte("k"), []byte("v"), 0))
			// One bucket: "k" is in way 0, entry 8 (the spare of an empty
			// bucket).
			n := cache.EntryWords(c)
			tc.spoil(cache.Buckets(c)[:8], cache.Entries(c)[8*n:9*n])
			done := make(chan bool, 1)
			go func() { _, ok := c.Get([]byte("k"), nil); done <- ok }()
			select {
			case ok := <-done:
				assert.False(t, ok, "a corrupt bucket holds nothing to trust")
			case <-time.After(10 * time.Second):
				t.Fatal("Get hung")
			}
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			require.NoError(t, c.Set(ctx, []byte("k"), []byte("again"), 0))
			v, ok := c.Get([]byte("k"), nil)
			assert.True(t, ok)
			assert.Equal(t, "again", string(v))
			require.NoError(t, c.Set(ctx, []byte("j"), []byte("other"), 0))
			v, ok = c.Get([]byte("j"), nil)
			assert.True(t, ok)
			assert.Equal(t, "other", string(v))
		})
	}
}

// After Close, Get misses and Set and Delete report the region closed,
// without touching the unmapped memory.
func TestUseAfterClose(t *testing.T) {
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, cache.Options{Capacity: 8, MaxKey: 8, MaxValue: 16})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, []byte("k"), []byte("v"), 0))
	require.NoError(t, c.Close())
	_, ok := c.Get([]byte("k"), nil)
	assert.False(t, ok)
	assert.ErrorIs(t, c.Set(ctx, []byte("k"), []byte("v"), 0), fs.ErrClosed)
	assert.ErrorIs(t, c.Delete(ctx, []byte("k")), fs.ErrClosed)
}

// Goroutines of one process: readers and writers of the same few keys. Run
// under -race it checks the copies' forms too.
func TestGoroutines(t *testing.T) {
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, opts)
	require.NoError(t, err)
	defer c.Close()
	ctx := context.Background()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, opts.MaxValue)
			for n := uint64(1); !stop.Load(); n++ {
				k := uint64(rand.IntN(16))
				if g%2 == 0 {
					if err := c.Set(ctx, key(k), value(k, n<<2|uint64(g)), 0); err != nil {
						t.Error(err)
						return
					}
				} else if v, ok := c.Get(key(k), buf[:0]); ok && check(k, v) != nil {
					bad.Add(1)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	assert.Zero(t, bad.Load())
	st := c.Stats()
	assert.Greater(t, st.Hits, uint64(100))
	assert.Greater(t, st.Sets, uint64(100))
	assert.Equal(t, 16, st.Entries)
}

// Stats count what happened, across processes' lines; eviction keeps the
// entries Gets use.
func TestStatsAndClock(t *testing.T) {
	c, _ := smallCache(t)
	ctx := context.Background()
	for i := range 8 {
		require.NoError(t, c.Set(ctx, []byte{byte('a' + i)}, []byte("v"), 0))
	}
	// Use "a" and "b"; the next two Sets must evict others.
	c.Get([]byte("a"), nil)
	c.Get([]byte("b"), nil)
	c.Get([]byte("zz"), nil)
	require.NoError(t, c.Set(ctx, []byte("x"), []byte("v"), 0))
	require.NoError(t, c.Set(ctx, []byte("y"), []byte("v"), 0))
	_, okA := c.Get([]byte("a"), nil)
	_, okB := c.Get([]byte("b"), nil)
	assert.True(t, okA && okB, "CLOCK evicted an entry a Get had used")
	require.NoError(t, c.Delete(ctx, []byte("x")))
	require.NoError(t, c.Delete(ctx, []byte("never set")))
	require.NoError(t, c.Set(ctx, []byte("t"), []byte("v"), time.Millisecond)) // takes x's empty way
	time.Sleep(2 * time.Millisecond)
	require.NoError(t, c.Set(ctx, []byte("u"), []byte("v"), 0)) // takes t's expired one
	require.NoError(t, c.Set(ctx, []byte("w"), []byte("v"), 0)) // evicts
	st := c.Stats()
	assert.Equal(t, cache.Stats{Hits: 4, Misses: 1, Sets: 13, Deletes: 1, Evictions: 3, Expirations: 1, Entries: 8, Capacity: 8}, st)
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

// A Set that needs a way replaces expired entries, soonest first, before
// CLOCK evicts a live one: the bucket's bound on its soonest expiry holds
// the next TTL once the first entry's is gone.
func TestSoonestExpiry(t *testing.T) {
	c, _ := smallCache(t) // one bucket
	ctx := context.Background()
	for i := range 8 {
		ttl := map[int]time.Duration{2: time.Millisecond, 5: 60 * time.Millisecond}[i]
		require.NoError(t, c.Set(ctx, []byte{byte('a' + i)}, []byte("v"), ttl))
	}
	time.Sleep(5 * time.Millisecond)
	require.NoError(t, c.Set(ctx, []byte("x"), []byte("v"), 0)) // takes c's way
	_, ok := c.Get([]byte("f"), nil)
	require.True(t, ok, "f expired early")
	time.Sleep(70 * time.Millisecond)
	require.NoError(t, c.Set(ctx, []byte("y"), []byte("v"), 0)) // takes f's
	st := c.Stats()
	assert.Equal(t, uint64(2), st.Expirations, "%+v", st)
	assert.Zero(t, st.Evictions, "%+v", st)
	for _, k := range []string{"a", "b", "d", "e", "g", "h", "x", "y"} {
		_, ok := c.Get([]byte(k), nil)
		assert.True(t, ok, k)
	}
}
