//go:build linux

package cache_test

import (
	"context"
	"os"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/shm"
)

// Inspect reads a cache's dimensions from the cache, and what Stats and
// Writers give, without opening it as a cache.
func TestInspect(t *testing.T) {
	cpath, _ := paths(t)
	opt := cache.Options{Capacity: 100, MaxKey: 24, MaxValue: 40, Shards: 3, Region: shm.Options{Slots: 16}}
	c, err := cache.Open(cpath, opt)
	require.NoError(t, err)
	defer c.Close()
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, []byte("a"), []byte("1"), 0))
	c.Get([]byte("a"), nil)
	c.Get([]byte("b"), nil)

	rep, err := cache.Inspect(cpath)
	require.NoError(t, err)
	assert.Equal(t, cpath, rep.Path)
	assert.Equal(t, cache.Options{Capacity: 104, MaxKey: 24, MaxValue: 40, Shards: 3, Region: shm.Options{Slots: 16}}, rep.Options)
	assert.Equal(t, c.Stats(), rep.Stats)
	assert.Equal(t, cache.Stats{Hits: 1, Misses: 1, Sets: 1, Entries: 1, Capacity: 104}, rep.Stats)
	assert.Len(t, rep.Writers, 3)

	// The Options it gives open the cache.
	o := rep.Options
	c2, err := cache.Open(cpath, o)
	require.NoError(t, err)
	v, ok := c2.Get([]byte("a"), nil)
	assert.True(t, ok)
	assert.Equal(t, "1", string(v))
	c2.Close()
}

// Inspect of a region that holds no cache, or a cache whose header is
// corrupt, newer, or larger than its file, is ErrMismatch; of a file that is
// no region, shm's error. None crashes, and none writes.
func TestInspectBadRegions(t *testing.T) {
	cpath, _ := paths(t)
	r, err := shm.Open(cpath, shm.Options{Size: 4096})
	require.NoError(t, err)
	_, err = cache.Inspect(cpath)
	assert.ErrorIs(t, err, cache.ErrMismatch, "a region of zeros")
	r.Close()

	opt := cache.Options{Capacity: 16, MaxKey: 8, MaxValue: 8}
	cpath, _ = paths(t)
	c, err := cache.Open(cpath, opt)
	require.NoError(t, err)
	defer c.Close()
	raw, err := shm.Open(cpath, shm.Options{NoCreate: true}) // no layout: the region as it is
	require.NoError(t, err)
	defer raw.Close()
	b, err := raw.Bytes(0, 64)
	require.NoError(t, err)
	hdr := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), 8)
	good := *(*[8]uint64)(hdr)
	for name, poke := range map[string]func(){
		"newer version":  func() { hdr[1] = 2 },
		"no magic":       func() { hdr[0] = 0 },
		"huge buckets":   func() { hdr[2] = 1 << 40 },
		"more buckets":   func() { hdr[2] = 1 << 20 },
		"zero key":       func() { hdr[3] = 0 },
		"more shards":    func() { hdr[5] = 3 },
		"no stats lines": func() { hdr[6] = 0 },
	} {
		*(*[8]uint64)(hdr) = good
		poke()
		_, err := cache.Inspect(cpath)
		assert.ErrorIs(t, err, cache.ErrMismatch, name)
	}
	*(*[8]uint64)(hdr) = good
	_, err = cache.Inspect(cpath)
	require.NoError(t, err)

	// A cache file cut short (by hand, or a full disk's copy) is an
	// error too, never a fault.
	cut := cpath + ".cut"
	whole, err := os.ReadFile(cpath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cut, whole[:len(whole)-4096], 0o600))
	_, err = cache.Inspect(cut)
	assert.Error(t, err)
	t.Log(err)

	plain := cpath + ".plain"
	require.NoError(t, os.WriteFile(plain, []byte("not a region"), 0o600))
	_, err = cache.Inspect(plain)
	assert.ErrorIs(t, err, shm.ErrNotRegion)
	_, err = cache.Inspect(cpath + ".absent")
	assert.ErrorIs(t, err, os.ErrNotExist)
}
