//go:build linux

package cache_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/proctest"
)

// tagOfKey sets key in the empty one-bucket cache c, reads the tag its way
// holds (way 0: the first empty way), and deletes it again.
func tagOfKey(t *testing.T, c *cache.Cache, k []byte) uint64 {
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, k, []byte("x"), 0))
	m := atomic.LoadUint64(&cache.Buckets(c)[0])
	require.NoError(t, c.Delete(ctx, k))
	return m >> 4 & (1<<12 - 1)
}

// keysOfTag returns n keys whose tag is tag, in the one-bucket cache c.
func keysOfTag(t *testing.T, c *cache.Cache, tag uint64, n int) [][]byte {
	var ks [][]byte
	for i := 0; len(ks) < n; i++ {
		require.Less(t, i, 1<<22, "no key of tag %d found", tag)
		k := []byte("r" + strconv.Itoa(i))
		if tagOfKey(t, c, k) == tag {
			ks = append(ks, k)
		}
	}
	return ks
}

// TestDeletedKeyStaysDeleted: match may name the way just above a
// matching one (the subtraction's borrow) when that way's tag is the key's
// XOR 1; an empty way has tag 0, so for a key of tag 1, a deleted way just
// above another tag-1 key's way is a candidate, and it still names the
// entry with the deleted key's bytes, its hash and key intact. Get must
// check the way's tag, or the deleted key is back.
func TestDeletedKeyStaysDeleted(t *testing.T) {
	t.Run("next way", func(t *testing.T) {
		c, _ := smallCache(t) // one bucket
		ks := keysOfTag(t, c, 1, 2)
		a, k := ks[0], ks[1]
		ctx := context.Background()
		require.NoError(t, c.Set(ctx, a, []byte("A"), 0)) // way 0
		require.NoError(t, c.Set(ctx, k, []byte("K"), 0)) // way 1
		require.NoError(t, c.Delete(ctx, k))
		v, ok := c.Get(k, nil)
		assert.False(t, ok, "deleted key %q is back, value %q", k, v)
	})
	t.Run("chain of empty ways", func(t *testing.T) {
		c, _ := smallCache(t)
		ks := keysOfTag(t, c, 1, 2)
		a, k := ks[0], ks[1]
		ctx := context.Background()
		require.NoError(t, c.Set(ctx, a, []byte("A"), 0))   // way 0
		require.NoError(t, c.Set(ctx, []byte("x"), nil, 0)) // way 1
		require.NoError(t, c.Set(ctx, []byte("y"), nil, 0)) // way 2
		require.NoError(t, c.Set(ctx, k, []byte("K"), 0))   // way 3
		require.NoError(t, c.Delete(ctx, []byte("x")))
		require.NoError(t, c.Delete(ctx, []byte("y")))
		require.NoError(t, c.Delete(ctx, k))
		v, ok := c.Get(k, nil)
		assert.False(t, ok, "deleted key %q is back, value %q", k, v)
	})
}

// hotOptions is a one-bucket cache for values of up to size bytes.
func hotOptions(size int) cache.Options {
	return cache.Options{Capacity: 8, MaxKey: 8, MaxValue: size}
}

// hotCache opens a fresh one-bucket cache for values of n bytes, closed
// when the test ends, holding the hot key at version 0; and its path.
func hotCache(t *testing.T, n int) (*cache.Cache, string) {
	cpath, _ := paths(t)
	c, err := cache.Open(cpath, hotOptions(n))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.Set(context.Background(), []byte("hot"), hotValue(0, n), 0))
	return c, cpath
}

// hotValue is version ver of the hot key, n bytes: ver in the first 8, then
// a filler that depends on ver, so that a mix of two versions fails hotCheck.
func hotValue(ver uint64, n int) []byte {
	v := make([]byte, n)
	binary.LittleEndian.PutUint64(v, ver)
	for i := 8; i < n; i++ {
		v[i] = byte(ver*131 + uint64(i))
	}
	return v
}

func hotCheck(v []byte, n int) error {
	if len(v) != n {
		return fmt.Errorf("%d bytes, want %d", len(v), n)
	}
	ver := binary.LittleEndian.Uint64(v)
	for i := 8; i < n; i++ {
		if v[i] != byte(ver*131+uint64(i)) {
			return fmt.Errorf("torn: version %d, byte %d", ver, i)
		}
	}
	return nil
}

// hotWriter: args cache, value size, milliseconds. Sets the hot key again
// and again for that long.
func hotWriter(args []string) int {
	n, _ := strconv.Atoi(args[1])
	ms, _ := strconv.Atoi(args[2])
	c, err := cache.Open(args[0], hotOptions(n))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	vals := [2][]byte{hotValue(1, n), hotValue(2, n)}
	ctx := context.Background()
	end := time.Now().Add(time.Duration(ms) * time.Millisecond)
	sets := 0
	for ; time.Now().Before(end); sets++ {
		if err := c.Set(ctx, []byte("hot"), vals[sets%2], 0); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	fmt.Println("sets", sets)
	return 0
}

// TestHotKeyNeverMisses: one key, never deleted, never evicted, always
// there, Set again and again by a writer in another process; a reader in
// this one Gets it. Any miss is a key the cache held that Get said it did
// not: with values so large that a Get copies one more slowly than a Set
// writes one, the entry it reads is rewritten under it again and again, and
// a Get that gave up after a time would miss.
func TestHotKeyNeverMisses(t *testing.T) {
	for _, n := range []int{64, 64 << 10, 1 << 20} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			h := proctest.New(t, 60*time.Second)
			c, cpath := hotCache(t, n)
			w := h.Spawn("hot-writer", cpath, strconv.Itoa(n), "1500")
			buf := make([]byte, 0, n)
			var gets, misses, bad int
			time.Sleep(100 * time.Millisecond)
			for end := time.Now().Add(time.Second); time.Now().Before(end); gets++ {
				v, ok := c.Get([]byte("hot"), buf[:0])
				if !ok {
					misses++
				} else if err := hotCheck(v, n); err != nil {
					bad++
					t.Log(err)
				}
			}
			out := w.Wait(t, 30*time.Second)
			require.NoError(t, w.Err, out)
			t.Logf("value %d bytes: %d gets, %d misses, %d bad; writer: %s", n, gets, misses, bad, strings.TrimSpace(out))
			assert.Zero(t, bad, "torn values")
			assert.Zero(t, misses, "Get missed a key that was there all along")
		})
	}
}

// The churn test: one bucket, churnKeys keys, all of which fit, written by
// churnWriters processes (key k by writer k % churnWriters) and read by one.
const (
	churnKeys    = 8  // all fit: a miss is checked too
	churnEvict   = 12 // more than fit: the hand moves
	churnWriters = 2
	cMono        = 9 // a Get returned an older version than a Get before it
)

var churnOpts = cache.Options{Capacity: 8, MaxKey: 16, MaxValue: opts.MaxValue}

func openChurn(args []string) (*cache.Cache, *ctl, error) {
	c, err := cache.Open(args[0], churnOpts)
	if err != nil {
		return nil, nil, err
	}
	x, err := openCtl(args[1])
	return c, x, err
}

// churnWriter: args cache, ctl, index, keys. Sets (and now and then Deletes) its
// keys at their next versions until stopped.
func churnWriter(args []string) int {
	c, x, err := openChurn(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	i, _ := strconv.Atoi(args[2])
	nk, _ := strconv.Atoi(args[3])
	ctx := context.Background()
	for n := uint64(0); !x.stopped(); n++ {
		k := n%uint64(nk/churnWriters)*churnWriters + uint64(i)
		if err := x.write(ctx, c, k, 0); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	return 0
}

// churnReader: args cache, ctl, keys. Gets the keys and checks each answer as the
// kill test's readers do (whole, fresh, not resurrected, no lossless miss),
// and that no Get returns an older version of a key than a Get before it.
func churnReader(args []string) int {
	c, x, err := openChurn(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	nk, _ := strconv.Atoi(args[2])
	buf := make([]byte, 0, churnOpts.MaxValue)
	last := make([]uint64, nk)
	for n := uint64(0); !x.stopped(); n++ {
		k := n % uint64(nk)
		ver, ok := x.read(c, k, buf, nk <= churnKeys) // more keys than ways: evicted, maybe
		if !ok {
			continue
		}
		if ver < last[k] {
			x.report(cMono, fmt.Errorf("key %d: version %d after version %d", k, ver, last[k]))
		}
		last[k] = ver
	}
	return 0
}

// TestOneBucketChurn: the kill test's checks, but every key in one
// bucket, so that each Set renames a way the reader may be reading, and
// entries go round the spare fast: the ABA of a way that names the same
// entry again two Sets later happens all the time.
func TestOneBucketChurn(t *testing.T) {
	h := proctest.New(t, 60*time.Second)
	cpath, xpath := paths(t)
	c, err := cache.Open(cpath, churnOpts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	x, err := openCtl(xpath)
	require.NoError(t, err)
	t.Cleanup(func() { x.r.Close() })
	var kids []*proctest.Child
	for i := range churnWriters {
		kids = append(kids, h.Spawn("churn-writer", cpath, xpath, strconv.Itoa(i), strconv.Itoa(churnKeys)))
	}
	kids = append(kids, h.Spawn("churn-reader", cpath, xpath, strconv.Itoa(churnKeys)))
	// Stats on the cache as it is written: never more entries than ways.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		st := c.Stats()
		require.LessOrEqual(t, st.Entries, st.Capacity)
		time.Sleep(100 * time.Microsecond)
	}
	atomic.StoreUint64(&x.w[cStop], 1)
	for _, k := range kids {
		out := k.Wait(t, 20*time.Second)
		assert.NoError(t, k.Err, out)
		if out != "" {
			t.Log(strings.TrimSpace(out))
		}
	}
	t.Logf("%d writes, %d reads, %d hits; %d torn, %d stale, %d lost, %d out of order; %+v",
		x.w[cSets], x.w[cReads], x.w[cHits], x.w[cBad], x.w[cStale], x.w[cLost], x.w[cMono], c.Stats())
	assert.Greater(t, x.w[cHits], uint64(1000))
	assert.Zero(t, x.w[cBad], "torn values")
	assert.Zero(t, x.w[cStale], "stale or resurrected values")
	assert.Zero(t, x.w[cLost], "lost keys")
	assert.Zero(t, x.w[cMono], "a Get went back in time")
	assert.Zero(t, c.Stats().Evictions, "an eviction: the lost check means nothing")
}

// TestCrashPointsOneBucket: the churn test, with writer 0 dying at each of
// the cache's crash points (built with -tags shmlock_fault), again and
// again, on a pass chosen at random, and taken over by its next life, in
// the one bucket the reader reads.
func TestCrashPointsOneBucket(t *testing.T) {
	if !fault.Enabled {
		t.Skip("needs -tags shmlock_fault")
	}
	for _, p := range fault.All() {
		if !strings.HasPrefix(p.String(), "cache-") {
			continue
		}
		nk := churnKeys
		if p == fault.CacheHandMoved {
			nk = churnEvict // the hand moves only in a full bucket
		}
		t.Run(p.String(), func(t *testing.T) {
			h := proctest.New(t, 90*time.Second)
			cpath, xpath := paths(t)
			c, err := cache.Open(cpath, churnOpts)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			x, err := openCtl(xpath)
			require.NoError(t, err)
			t.Cleanup(func() { x.r.Close() })
			nks := strconv.Itoa(nk)
			other := h.Spawn("churn-writer", cpath, xpath, "1", nks)
			reader := h.Spawn("churn-reader", cpath, xpath, nks)
			deaths := 0
			for range 30 {
				cmd := proctest.Command("churn-writer", cpath, xpath, "0", nks)
				cmd.Env = append(cmd.Env, "SHMLOCK_FAULT="+p.String()+":"+strconv.Itoa(1+rand.IntN(2000)))
				v := h.Start(cmd)
				out := v.Wait(t, 20*time.Second)
				if strings.Contains(out, "fault: dying at") {
					deaths++
				} else {
					t.Fatalf("the victim did not die: %v %s", v.Err, out)
				}
			}
			n := atomic.LoadUint64(&x.w[cSets])
			proctest.Eventually(t, 10*time.Second, "writer 1 wedged", func() bool { return atomic.LoadUint64(&x.w[cSets]) > n+1000 })
			atomic.StoreUint64(&x.w[cStop], 1)
			for _, k := range []*proctest.Child{other, reader} {
				out := k.Wait(t, 20*time.Second)
				assert.NoError(t, k.Err, out)
			}
			st := c.Stats()
			t.Logf("%d deaths, %d writes, %d reads, %d hits; %d torn, %d stale, %d lost, %d out of order; %+v",
				deaths, x.w[cSets], x.w[cReads], x.w[cHits], x.w[cBad], x.w[cStale], x.w[cLost], x.w[cMono], st)
			assert.Zero(t, x.w[cBad], "torn values")
			assert.Zero(t, x.w[cStale], "stale or resurrected values")
			assert.Zero(t, x.w[cLost], "lost keys")
			assert.Zero(t, x.w[cMono], "a Get went back in time")
			if nk == churnKeys {
				assert.Zero(t, st.Evictions, "an eviction: the lost check means nothing")
			}
			assert.Zero(t, st.Repairs, "a crash left a map that needed repair")
			// The last words: every key holds what its last write left
			// (or the write before, if its writer died in it).
			for k := range uint64(nk) {
				v, ok := c.Get(key(k), nil)
				done, next := x.w[cDone+k], x.w[cNext+k]
				if ok {
					assert.NoError(t, check(k, v))
					assert.NoError(t, fresh(k, v, done, next))
				} else if nk == churnKeys {
					assert.NoError(t, mayMiss(k, done, next))
				}
			}
		})
	}
}

// TestCorruptWayNamesNoEntry: a map written from outside whose way
// has the key's tag but names entry 15 XOR the way (no entry: there are
// Ways+1): Get misses and Stats counts nothing there, without indexing past
// the entries (TestCorrupt's all-ones map has tag 0xfff, which no key it
// looks up has, so it never reaches find's check); the next Set repairs.
func TestCorruptWayNamesNoEntry(t *testing.T) {
	c, _ := smallCache(t) // one bucket: the last, so past its entries is past the slice
	ctx := context.Background()
	k := []byte("k")
	require.NoError(t, c.Set(ctx, k, []byte("v"), 0))
	bk := cache.Buckets(c)
	m := atomic.LoadUint64(&bk[0])    // way 0: the tag, entry 8
	atomic.StoreUint64(&bk[0], m|0xf) // entry 15 XOR 0
	_, ok := c.Get(k, nil)
	assert.False(t, ok)
	assert.Zero(t, c.Stats().Entries)
	require.NoError(t, c.Set(ctx, k, []byte("again"), 0))
	v, ok := c.Get(k, nil)
	assert.True(t, ok)
	assert.Equal(t, "again", string(v))
	assert.Equal(t, uint64(1), c.Stats().Repairs)
}

// TestTruncatedFile: a cache file cut short (here: to half, after a
// clean close) is refused at Open, not mapped and faulted on.
func TestTruncatedFile(t *testing.T) {
	cpath, _ := paths(t)
	o := cache.Options{Capacity: 1024, MaxKey: 8, MaxValue: 64}
	c, err := cache.Open(cpath, o)
	require.NoError(t, err)
	require.NoError(t, c.Set(context.Background(), []byte("k"), []byte("v"), 0))
	require.NoError(t, c.Close())
	fi, err := os.Stat(cpath)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(cpath, fi.Size()/2))
	_, err = cache.Open(cpath, o)
	require.Error(t, err)
	t.Log(err)
}
