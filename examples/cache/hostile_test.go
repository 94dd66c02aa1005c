//go:build linux

package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/shm"
)

// neighborWriter: args cache, value size, milliseconds. Sets key "nb" (not the
// probed key) again and again, in the one-bucket hotOptions cache.
func neighborWriter(args []string) int {
	n, _ := strconv.Atoi(args[1])
	ms, _ := strconv.Atoi(args[2])
	c, err := cache.Open(args[0], hotOptions(n))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	v := make([]byte, n)
	ctx := context.Background()
	sets := 0
	for end := time.Now().Add(time.Duration(ms) * time.Millisecond); time.Now().Before(end); sets++ {
		if err := c.Set(ctx, []byte("nb"), v, 0); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	fmt.Println("sets", sets)
	return 0
}

// getBound is what the tests ask of a Get's time: its own bound (1 ms of
// lock-free looks, lockedWait for the lock, a copy or two) with room for
// the scheduler of a machine that runs other test binaries beside this one.
const getBound = 10 * cache.LockedWait

// TestOddEntryBusyNeighbor: an entry left odd from outside under a map
// that names it makes Get miss after about 1 ms, and soon, even while
// another process Sets another key of the same map word (ways 0..3) again
// and again.
func TestOddEntryBusyNeighbor(t *testing.T) {
	h := proctest.New(t, 30*time.Second)
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, hotOptions(64))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, []byte("k"), []byte("v"), 0))  // way 0, entry 8
	require.NoError(t, c.Set(ctx, []byte("nb"), []byte("v"), 0)) // way 1
	n := cache.EntryWords(c)
	atomic.StoreUint64(&cache.Entries(c)[8*n], 7) // k's entry odd, from outside

	start := time.Now()
	_, ok := c.Get([]byte("k"), nil)
	alone := time.Since(start)
	require.False(t, ok)
	t.Logf("Get of the odd entry, bucket quiet: %v", alone)

	const writeMS = 3000
	w := h.Spawn("neighbor-writer", cpath, "64", strconv.Itoa(writeMS))
	s0 := c.Stats().Sets
	proctest.Eventually(t, 5*time.Second, "the neighbor never wrote", func() bool { return c.Stats().Sets > s0+1000 })
	var worst, total time.Duration
	gets := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); gets++ {
		start := time.Now()
		_, ok := c.Get([]byte("k"), nil)
		d := time.Since(start)
		total += d
		worst = max(worst, d)
		require.False(t, ok)
	}
	out := w.Wait(t, 20*time.Second)
	require.NoError(t, w.Err, out)
	t.Logf("Gets of the odd entry, neighbor busy: %d, mean %v, worst %v; neighbor: %s", gets, total/time.Duration(gets), worst, strings.TrimSpace(out))
	assert.Less(t, worst, getBound,
		"Get of an entry left odd from outside spun while another key of its map word was Set")
}

// TestHotKeyGetBounded: the hot key of TestHotKeyNeverMisses, 64 KiB and
// 1 MiB values Set back to back by another process, Got with a nil dst (so
// every look allocates the value anew, and is slower than a Set): no Get
// misses, and none takes much longer than Get's bounds (its lock-free looks
// and its wait for the shard's lock).
func TestHotKeyGetBounded(t *testing.T) {
	for _, n := range []int{64 << 10, 1 << 20} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			if raceEnabled && n > 64<<10 {
				// An instrumented Set of 1 MiB holds the lock about
				// 30 ms, back to back: the lock is handed to a waiting
				// Get later than lockedWait, which then may miss.
				t.Skip("under -race, a 1 MiB Set outlasts the Get's wait for the lock")
			}
			h := proctest.New(t, 60*time.Second)
			c, cpath := hotCache(t, n)
			w := h.Spawn("hot-writer", cpath, strconv.Itoa(n), "3000")
			time.Sleep(100 * time.Millisecond)
			var gets, misses int
			var worst time.Duration
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end); gets++ {
				s := time.Now()
				v, ok := c.Get([]byte("hot"), nil)
				if d := time.Since(s); d > worst {
					worst = d
				}
				if !ok {
					misses++
				} else {
					require.NoError(t, hotCheck(v, n))
				}
			}
			out := w.Wait(t, 30*time.Second)
			require.NoError(t, w.Err, out)
			t.Logf("value %d bytes, nil dst: %d gets, %d misses, worst Get %v; writer: %s", n, gets, misses, worst, strings.TrimSpace(out))
			assert.Zero(t, misses, "Get missed a hot key that was there all along")
			assert.Less(t, worst, getBound, "one Get took %v", worst)
		})
	}
}

// header returns the cache header words of the cache at path, through a
// raw (layout-less) open of its region.
func header(t *testing.T, path string) []uint64 {
	raw, err := shm.Open(path, shm.Options{NoCreate: true})
	require.NoError(t, err)
	t.Cleanup(func() { raw.Close() })
	b, err := raw.Bytes(0, 64)
	require.NoError(t, err)
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), 8)
}

// TestInspectWrongDims: a header whose values are those of another,
// smaller cache, that fits in the region: Inspect must refuse it (the
// layout the header gives is not the region's), not read Stats from the
// wrong offsets.
func TestInspectWrongDims(t *testing.T) {
	cpath, _ := paths(t)
	opt := cache.Options{Capacity: 128, MaxKey: 8, MaxValue: 16, Shards: 4}
	c, err := cache.Open(cpath, opt)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	for i := range 64 {
		require.NoError(t, c.Set(ctx, []byte(strconv.Itoa(i)), []byte("v"), 0))
	}
	hdr := header(t, cpath)
	good := *(*[8]uint64)(hdr)
	for name, poke := range map[string]func(){
		"fewer buckets":   func() { hdr[2] = 8 },
		"shorter values":  func() { hdr[4] = 12 },
		"shorter keys":    func() { hdr[3] = 4 },
		"fewer stat rows": func() { hdr[6] = 8 },
	} {
		t.Run(name, func(t *testing.T) {
			*(*[8]uint64)(hdr) = good
			poke()
			defer func() { *(*[8]uint64)(hdr) = good }()
			rep, err := cache.Inspect(cpath)
			if err != nil {
				assert.ErrorIs(t, err, cache.ErrMismatch)
				return
			}
			_, oerr := cache.Open(cpath, rep.Options)
			t.Logf("Inspect: no error, Options %+v, Stats %+v; Open with them: %v", rep.Options, rep.Stats, oerr)
			assert.NoError(t, oerr, "Inspect returned, without error, Options that are not the cache's")
		})
	}
}

// TestInspectNoWrite: Inspect, many times, of a cache whose one
// shard's writer is stopped holding the lock, then dead holding it, changes
// no byte of the file, nor its mtime or ctime.
func TestInspectNoWrite(t *testing.T) {
	for _, mode := range []shm.Mode{shm.ModeRobust, shm.ModeProbe} {
		t.Run(mode.String(), func(t *testing.T) {
			h := proctest.New(t, 60*time.Second)
			cpath, _ := paths(t)
			o := hotOptions(1 << 16)
			o.Region.Mode = mode
			c, err := cache.Open(cpath, o)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			var w *proctest.Child
			for try := 0; ; try++ {
				require.Less(t, try, 200, "never caught the writer holding its lock")
				w = h.Spawn("hot-writer", cpath, strconv.Itoa(1<<16), "20000")
				time.Sleep(time.Duration(20+rand.IntN(30)) * time.Millisecond)
				require.NoError(t, syscall.Kill(w.Pid(), syscall.SIGSTOP))
				waitStopped(t, w.Pid())
				if heldBy(c, w.Pid()) >= 0 {
					break
				}
				w.Kill()
			}
			snap := func() ([]byte, syscall.Stat_t) {
				b, err := os.ReadFile(cpath)
				require.NoError(t, err)
				var st syscall.Stat_t
				require.NoError(t, syscall.Stat(cpath, &st))
				return b, st
			}
			for _, phase := range []string{"stopped", "dead"} {
				if phase == "dead" {
					w.Kill()
				}
				time.Sleep(20 * time.Millisecond)
				b0, s0 := snap()
				time.Sleep(20 * time.Millisecond) // a coarse clock still ticks
				for range 200 {
					rep, err := cache.Inspect(cpath)
					require.NoError(t, err)
					// Robust mode: the kernel released the dead holder's lock (OwnerDied).
					require.True(t, rep.Writers[0].Held || phase == "dead" && rep.Writers[0].OwnerDied, "%+v", rep.Writers[0])
				}
				b1, s1 := snap()
				assert.True(t, bytes.Equal(b0, b1), "%s: Inspect changed the file's bytes", phase)
				assert.Equal(t, s0.Mtim, s1.Mtim, "%s: mtime", phase)
				assert.Equal(t, s0.Ctim, s1.Ctim, "%s: ctime", phase)
				rep, _ := cache.Inspect(cpath)
				t.Logf("%s: %+v", phase, rep.Writers[0])
			}
		})
	}
}

// inspectLoop: args path, milliseconds. Inspects the cache again and
// again; prints how many succeeded and how each failed.
func inspectLoop(args []string) int {
	ms, _ := strconv.Atoi(args[1])
	ok, fails := 0, map[string]int{}
	for end := time.Now().Add(time.Duration(ms) * time.Millisecond); time.Now().Before(end); {
		rep, err := cache.Inspect(args[0])
		if err != nil {
			kind := "other"
			for _, k := range []error{cache.ErrMismatch, shm.ErrNotRegion, shm.ErrTruncated, os.ErrNotExist, shm.ErrBusy} {
				if errors.Is(err, k) {
					kind = k.Error()
					break
				}
			}
			if strings.Contains(err.Error(), "truncated while it was read") {
				kind = "fault recovered"
			}
			if fails[kind] == 0 {
				fmt.Println("first", kind, ":", err)
			}
			fails[kind]++
			continue
		}
		if rep.Stats.Capacity != 64 || rep.Options.MaxValue != 4096 {
			fmt.Printf("garbage: %+v\n", rep)
			return 5
		}
		ok++
	}
	fmt.Println("ok", ok, "fails", fails)
	return 0
}

// truncator: args path, milliseconds. Cuts the file short and grows it
// back, or replaces it with a cut copy, again and again.
func truncator(args []string) int {
	path := args[0]
	ms, _ := strconv.Atoi(args[1])
	whole, err := os.ReadFile(path)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	n := 0
	for end := time.Now().Add(time.Duration(ms) * time.Millisecond); time.Now().Before(end); n++ {
		switch n % 3 {
		case 0, 1: // in place: the mappings of readers lose pages
			cut := int64(rand.IntN(len(whole)))
			if n%3 == 1 {
				cut = int64(len(whole) - 4096*(1+rand.IntN(4)))
			}
			if err := os.Truncate(path, cut); err != nil {
				fmt.Println(err)
				return 1
			}
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			if err := os.Truncate(path, int64(len(whole))); err != nil {
				fmt.Println(err)
				return 1
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				fmt.Println(err)
				return 1
			}
			f.WriteAt(whole[cut:], cut)
			f.Close()
		case 2: // replaced by a cut copy, then the whole one again
			tmp := path + ".tmp"
			os.WriteFile(tmp, whole[:rand.IntN(len(whole))], 0o600)
			os.Rename(tmp, path)
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			os.WriteFile(tmp, whole, 0o600)
			os.Rename(tmp, path)
		}
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
	}
	fmt.Println("cuts", n)
	return 0
}

// TestInspectWhileTruncated: a process Inspects a cache again and
// again while another cuts its file short in place, grows it back, and
// replaces it: Inspect never kills its process (SIGBUS), never hangs, and
// never returns a Report of other dimensions.
func TestInspectWhileTruncated(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's runtime cannot recover a fault in an access it instruments (docs/CACHE.md, limits)")
	}
	h := proctest.New(t, 60*time.Second)
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, cache.Options{Capacity: 64, MaxKey: 8, MaxValue: 4096})
	require.NoError(t, err)
	ctx := context.Background()
	for i := range 40 {
		require.NoError(t, c.Set(ctx, []byte(strconv.Itoa(i)), bytes.Repeat([]byte{1}, 4000), 0))
	}
	require.NoError(t, c.Close())
	insp := h.Spawn("inspect-loop", cpath, "4000")
	cut := h.Spawn("truncator", cpath, "4000")
	out := insp.Wait(t, 30*time.Second)
	t.Logf("inspector: %v\n%s", insp.Err, out)
	assert.NoError(t, insp.Err, "the inspecting process died: %s", out)
	out = cut.Wait(t, 30*time.Second)
	t.Logf("truncator: %s", strings.TrimSpace(out))
}

// TestInspectHostileHeader: random header words, each within what
// readHeader's first check lets pass (and some past it), in a region of a
// cache: Inspect errs or returns a Report of the cache's own Options; it
// never crashes or hangs, and it never reads past the region.
func TestInspectHostileHeader(t *testing.T) {
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, cache.Options{Capacity: 256, MaxKey: 16, MaxValue: 64, Shards: 8})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	hdr := header(t, cpath)
	good := *(*[8]uint64)(hdr)
	picks := []uint64{0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 64, 255, 256, 1 << 20, math.MaxInt32/8 - 1, math.MaxInt32 / 8,
		math.MaxInt32/8 + 1, math.MaxInt32, 1 << 32, math.MaxInt64, math.MaxUint64}
	var ok, bad, wrong int
	start := time.Now()
	for i := range 20000 {
		*(*[8]uint64)(hdr) = good
		for w := 2; w < 7; w++ {
			if rand.IntN(3) == 0 {
				hdr[w] = picks[rand.IntN(len(picks))]
				if rand.IntN(2) == 0 {
					hdr[w] = good[w] + uint64(rand.IntN(5)) - 2
				}
			}
		}
		if i%1000 == 0 {
			hdr[1] = uint64(rand.IntN(3))
		}
		s := time.Now()
		rep, err := cache.Inspect(cpath)
		require.Less(t, time.Since(s), 2*time.Second, "Inspect took long with header %v", *(*[8]uint64)(hdr))
		if err != nil {
			bad++
			continue
		}
		ok++
		if c2, oerr := cache.Open(cpath, rep.Options); oerr == nil {
			c2.Close()
		} else {
			wrong++
		}
	}
	*(*[8]uint64)(hdr) = good
	t.Logf("%d Reports (%d of them with Options that are not the cache's), %d errors, in %v", ok, wrong, bad, time.Since(start))
	assert.Positive(t, ok)
	assert.Zero(t, wrong, "Reports with Options that are not the cache's")
}

// The TTL tests' one-bucket cache.
var ttlOpts = cache.Options{Capacity: 8, MaxKey: 8, MaxValue: 16}

var ttls = []time.Duration{0, 0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 40 * time.Millisecond}

// way is what a bucket's way holds, read from outside.
type wayView struct {
	tag     uint64
	key     string
	expires int64
	used    uint64
}

// bucket0 reads bucket 0 of c: its ways and its soonest-expiry bound. Only
// when no writer writes.
func bucket0(c *cache.Cache) ([8]wayView, uint64) {
	bk := cache.Buckets(c)
	en := cache.Entries(c)
	n := cache.EntryWords(c)
	m := [2]uint64{atomic.LoadUint64(&bk[0]), atomic.LoadUint64(&bk[1])}
	var ws [8]wayView
	for w := range 8 {
		bits := m[w/4] >> (16 * (w % 4)) & 0xffff
		e := int(bits&15) ^ w
		x := en[e*n : e*n+n]
		klen := int(uint32(x[4]))
		kb := unsafe.Slice((*byte)(unsafe.Pointer(&x[5])), 8)
		ws[w] = wayView{tag: bits >> 4, key: string(kb[:min(klen, 8)]), expires: int64(x[2]), used: x[1]}
	}
	return ws, atomic.LoadUint64(&bk[3])
}

// boundHolds says what is wrong with bucket 0's bound, if anything: every
// named entry with a TTL that has not expired yet must be covered (a
// nonzero bound at or below its expiry); it counts the expired ones that
// are not.
func boundHolds(c *cache.Cache) (uncoveredExpired int, err error) {
	ws, bound := bucket0(c)
	now := time.Now().UnixNano()
	for w, x := range ws {
		if x.tag == 0 || x.expires == math.MaxInt64 {
			continue
		}
		if bound != 0 && uint64(x.expires) >= bound {
			continue
		}
		if x.expires <= now {
			uncoveredExpired++
			continue
		}
		return uncoveredExpired, fmt.Errorf("way %d (key %q) expires in %v, not covered by the bound %d (in %v)",
			w, x.key, time.Duration(x.expires-now), bound, time.Duration(int64(bound)-now))
	}
	return uncoveredExpired, nil
}

// TestTTLModel: one bucket, one writer, a TTL-heavy mix of Sets and
// Deletes of 24 keys. Before each Set the bucket is read from outside; after
// it: the bound covers every live TTL entry; a Set of a new key into a full
// bucket that held an entry expired (by a margin) replaced an expired entry
// and evicted none; Get never returns an expired value.
func TestTTLModel(t *testing.T) {
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, ttlOpts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	const margin = int64(200 * time.Microsecond)
	var sets, reclaim, evict int
	for i := range 30000 {
		k := "k" + strconv.Itoa(rand.IntN(24))
		if rand.IntN(10) == 0 {
			require.NoError(t, c.Delete(ctx, []byte(k)))
			continue
		}
		if rand.IntN(50) == 0 {
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		}
		ws, _ := bucket0(c)
		before := time.Now().UnixNano()
		present, full, expiredAt := false, true, -1
		for w, x := range ws {
			if x.tag == 0 {
				full = false
				continue
			}
			if x.key == k {
				present = true
			}
			if x.expires != math.MaxInt64 && x.expires+margin < before {
				expiredAt = w
			}
		}
		st0 := c.Stats()
		ttl := ttls[rand.IntN(len(ttls))]
		require.NoError(t, c.Set(ctx, []byte(k), []byte("v"+strconv.Itoa(i)), ttl))
		sets++
		st1 := c.Stats()
		if !present && full {
			if expiredAt >= 0 {
				reclaim++
				require.Equal(t, st0.Evictions, st1.Evictions,
					"set %d: a live entry was evicted though way %d (%+v) had expired %v before", i, expiredAt, ws[expiredAt],
					time.Duration(before-ws[expiredAt].expires))
			} else if st1.Evictions > st0.Evictions {
				evict++
			}
		}
		_, err := boundHolds(c)
		require.NoError(t, err, "after set %d", i)
		if i%7 == 0 {
			g := "k" + strconv.Itoa(rand.IntN(24))
			ws, _ := bucket0(c)
			_, ok := c.Get([]byte(g), nil)
			after := time.Now().UnixNano()
			for _, x := range ws {
				if ok && x.tag != 0 && x.key == g && x.expires != math.MaxInt64 && x.expires < after-margin {
					// The way still holds it (no writer): it expired before the Get began.
					t.Fatalf("Get returned %q, expired %v before", g, time.Duration(after-x.expires))
				}
			}
		}
	}
	st := c.Stats()
	t.Logf("%d sets; %d Sets into a full bucket with an expired entry, %d evictions otherwise; %+v", sets, reclaim, evict, st)
	assert.Positive(t, reclaim)
}

// ttlVictim: args cache. Sets keys of the TTL mix until killed (by a
// crash point or its parent).
func ttlVictim(args []string) int {
	c, err := cache.Open(args[0], ttlOpts)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ctx := context.Background()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
		k := "k" + strconv.Itoa(rand.IntN(24))
		if err := c.Set(ctx, []byte(k), []byte("v"), ttls[rand.IntN(len(ttls))]); err != nil {
			fmt.Println(err)
			return 1
		}
		if rand.IntN(100) == 0 {
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		}
	}
	return 0
}

// TestCrashPointsTTL: a writer of the TTL mix dies 40 times, at a
// crash point (with -tags shmlock_fault) or by SIGKILL at a random time;
// after each death, with no writer running, the bound covers every live TTL
// entry, and the entries it does not cover are expired. Then this process
// Sets new keys into the full bucket until every expired entry is gone, and
// counts the live entries evicted meanwhile (CLOCK's share).
func TestCrashPointsTTL(t *testing.T) {
	points := []string{"sigkill"}
	if fault.Enabled {
		points = append(points, "cache-hand-moved", "cache-entry-odd", "cache-entry-written", "cache-published")
	}
	for _, p := range points {
		t.Run(p, func(t *testing.T) {
			h := proctest.New(t, 120*time.Second)
			cpath, _ := paths(t)
			c, err := cache.Open(cpath, ttlOpts)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			ctx := context.Background()
			var uncovered, liveEvicted, deaths int
			for range 40 {
				cmd := proctest.Command("ttl-victim", cpath)
				if p != "sigkill" {
					cmd.Env = append(cmd.Env, "SHMLOCK_FAULT="+p+":"+strconv.Itoa(1+rand.IntN(3000)))
				}
				v := h.Start(cmd)
				if p == "sigkill" {
					time.Sleep(time.Duration(5+rand.IntN(40)) * time.Millisecond)
					v.Kill()
				} else {
					out := v.Wait(t, 30*time.Second)
					require.Contains(t, out, "fault: dying at", "the victim did not die")
				}
				deaths++
				u, err := boundHolds(c)
				require.NoError(t, err, "after death %d", deaths)
				uncovered += u
				// Reclaim: Set fresh keys (no TTL) until no expired entry is left.
				for j := 0; ; j++ {
					ws, _ := bucket0(c)
					now := time.Now().UnixNano()
					left := 0
					for _, x := range ws {
						if x.tag != 0 && x.expires != math.MaxInt64 && x.expires <= now {
							left++
						}
					}
					if left == 0 {
						break
					}
					require.Less(t, j, 64, "expired entries never reclaimed: %+v", ws)
					st0 := c.Stats()
					require.NoError(t, c.Set(ctx, []byte("f"+strconv.Itoa(j)), []byte("v"), 0))
					if st1 := c.Stats(); st1.Evictions > st0.Evictions {
						liveEvicted++
					}
				}
				_, err = boundHolds(c)
				require.NoError(t, err)
			}
			st := c.Stats()
			t.Logf("%d deaths; %d expired entries left uncovered; %d live entries evicted while an expired one was there; %+v",
				deaths, uncovered, liveEvicted, st)
			assert.Zero(t, uncovered, "a death left an expired entry above the bound")
			assert.Zero(t, liveEvicted, "a live entry was evicted while an expired one was there")
		})
	}
}

// TestGetStoppedWriter: the hot key's writer (values of 256 KiB) is
// SIGSTOPped at a random moment, 30 times, most of them holding the shard
// in the middle of a Set, then SIGKILLed: each time, with the writer
// stopped and then dead, Get returns the key, whole, at once.
func TestGetStoppedWriter(t *testing.T) {
	const n = 256 << 10
	h := proctest.New(t, 90*time.Second)
	c, cpath := hotCache(t, n)
	held := 0
	var worst time.Duration
	for range 30 {
		w := h.Spawn("hot-writer", cpath, strconv.Itoa(n), "20000")
		time.Sleep(time.Duration(30+rand.IntN(50)) * time.Millisecond)
		require.NoError(t, syscall.Kill(w.Pid(), syscall.SIGSTOP))
		waitStopped(t, w.Pid())
		if heldBy(c, w.Pid()) >= 0 {
			held++
		}
		for _, phase := range []string{"stopped", "dead"} {
			if phase == "dead" {
				w.Kill()
			}
			s := time.Now()
			v, ok := c.Get([]byte("hot"), nil)
			d := time.Since(s)
			worst = max(worst, d)
			require.True(t, ok, "%s writer: hot key missed", phase)
			require.NoError(t, hotCheck(v, n))
			require.Less(t, d, getBound, "%s writer: Get took %v", phase, d)
		}
	}
	t.Logf("30 stops, %d holding the shard; worst Get %v", held, worst)
}
