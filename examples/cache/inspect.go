package cache

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"sync/atomic"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
)

// The header is the first line of a cache's data: its dimensions, for
// Inspect, which reads caches it did not open. Every Open writes it, with
// the same values (its layout, which names them, matched), the magic last.
//
//	word  meaning
//	0     the magic, "shmcache"; anything else: no cache, or one being made
//	1     the header's version, 1
//	2     buckets
//	3     MaxKey
//	4     MaxValue
//	5     shards
//	6     stats lines (the region's slots when it was made)
const (
	hdrMagic = iota
	hdrVersion
	hdrBuckets
	hdrMaxKey
	hdrMaxValue
	hdrShards
	hdrStatSlots
	hdrWords

	magic         = 0x6568_6361_636d_6873 // "shmcache", little-endian
	headerVersion = 1
)

func writeHeader(r *shm.Region, off int, d dims, o Options) error {
	h, err := wordsOf(r, off, shm.LineSize)
	if err != nil {
		return err
	}
	for i, v := range [hdrWords]uint64{hdrVersion: headerVersion, hdrBuckets: uint64(d.nb), hdrMaxKey: uint64(o.MaxKey),
		hdrMaxValue: uint64(o.MaxValue), hdrShards: uint64(d.shards), hdrStatSlots: uint64(d.statSlots)} {
		if i != hdrMagic {
			atomic.StoreUint64(&h[i], v)
		}
	}
	atomic.StoreUint64(&h[hdrMagic], magic)
	return nil
}

// Report is what Inspect reads of a cache.
type Report struct {
	Path string
	// Options are the cache's dimensions, as an Open of it must give
	// them; Region.Slots is how many processes' counters it keeps.
	Options Options
	Stats   Stats
	Writers []shmlock.State // each shard's writers' lock
}

// Inspect reads the cache in the region at name (see shm.OpenReadOnly)
// without attaching to the region or writing to it: how a tool, such as
// the cachestat command, watches caches that other processes use. It needs
// no Options: it reads them from the cache. A region that holds no cache,
// or one whose first Open has not finished, fails with ErrMismatch.
func Inspect(name string) (rep *Report, err error) {
	r, err := shm.OpenReadOnly(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	// A file truncated under us (by a broken or hostile writer) faults
	// when we touch its lost pages: that is an error, not a crash.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if e := recover(); e != nil {
			if _, ok := e.(runtime.Error); !ok {
				panic(e)
			}
			rep, err = nil, fmt.Errorf("cache: reading %s failed (%v): was the file truncated while it was read?", r.Path(), e)
		}
	}()
	o, d, err := readHeader(r)
	if err != nil {
		return nil, err
	}
	// A header corrupted into other dimensions that fit the file would
	// be read as another cache: the layout it gives must be the region's.
	l, at := o.layout(d)
	if err := r.CheckLayout(l); errors.Is(err, shm.ErrLayout) {
		return nil, fmt.Errorf("%w: %s: its header describes a cache it does not hold (%w)", ErrMismatch, r.Path(), err)
	} else if err != nil {
		return nil, err
	}
	c := &Cache{r: r, nb: uint64(d.nb), maxKey: o.MaxKey, maxValue: o.MaxValue, keyWords: d.keyWords, entryW: d.entryW}
	if err := c.view(d, at); err != nil {
		return nil, err
	}
	rep = &Report{Path: r.Path(), Options: o, Stats: c.Stats()}
	for i := range d.shards {
		s, err := shmlock.Inspect(r, at.shards+i*shmlock.Size)
		if err != nil {
			return nil, err
		}
		rep.Writers = append(rep.Writers, s)
	}
	return rep, nil
}

// readHeader returns the dimensions r's cache header gives, if they are
// those of a cache that fits in r.
func readHeader(r *shm.Region) (Options, dims, error) {
	mismatch := func(why string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrMismatch, r.Path(), fmt.Sprintf(why, a...))
	}
	if r.Size() < shm.LineSize {
		return Options{}, dims{}, mismatch("its data (%d bytes) is too small for a cache header", r.Size())
	}
	h, err := wordsOf(r, 0, shm.LineSize)
	if err != nil {
		return Options{}, dims{}, err
	}
	var w [hdrWords]uint64
	w[hdrMagic] = atomic.LoadUint64(&h[hdrMagic])
	if w[hdrMagic] != magic {
		return Options{}, dims{}, mismatch("no cache header (a region of something else, or a cache being made)")
	}
	for i := hdrVersion; i < hdrWords; i++ {
		w[i] = atomic.LoadUint64(&h[i])
	}
	if w[hdrVersion] != headerVersion {
		return Options{}, dims{}, mismatch("cache header version %d; this package reads %d", w[hdrVersion], headerVersion)
	}
	for _, v := range w[hdrBuckets:] {
		if v > math.MaxInt32/Ways {
			return Options{}, dims{}, mismatch("a corrupt cache header: %v", w)
		}
	}
	o := Options{Capacity: int(w[hdrBuckets]) * Ways, MaxKey: int(w[hdrMaxKey]), MaxValue: int(w[hdrMaxValue]),
		Shards: int(w[hdrShards]), Region: shm.Options{Slots: int(w[hdrStatSlots])}}
	d, err := o.dims()
	if err != nil || d.nb != int(w[hdrBuckets]) || d.shards != o.Shards || d.statSlots != o.Region.Slots {
		return Options{}, dims{}, mismatch("a corrupt cache header: %v", w)
	}
	if o.Size() > r.Size() {
		return Options{}, dims{}, mismatch("the cache needs %d bytes of data; the region has %d", o.Size(), r.Size())
	}
	return o, d, nil
}
