package cache

import (
	"math/bits"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/words"
)

// Get appends key's value to dst and reports whether the key was there and
// not expired. It takes no lock and waits for no writer, live or dead; it
// writes nothing that other processes write: the entry's used mark, once
// the hand has cleared it, and this process's counters.
func (c *Cache) Get(key, dst []byte) ([]byte, bool) {
	if len(key) > c.maxKey || c.closed.Load() {
		return dst, false
	}
	h := c.hash(key)
	b := c.bucketOf(h)
	var (
		stuck uint64    // what the last look that yielded saw
		since time.Time // when it first saw that
	)
	for tries := 0; ; tries++ {
		v, r, saw := c.find(b, h, key, dst)
		switch r {
		case hit:
			c.count(statHits)
			return v, true
		case miss:
			c.count(statMisses)
			return dst, false
		}
		if tries >= readSpins {
			if now := time.Now(); saw != stuck || since.IsZero() {
				stuck, since = saw, now
			} else if now.Sub(since) > unreadableAfter {
				c.count(statMisses)
				return dst, false
			}
			runtime.Gosched()
		}
	}
}

type result uint8

const (
	miss  result = iota
	hit          // the value is appended
	again        // an entry changed while it was read: look again
)

// readSpins is how many times Get looks again before it yields, and starts
// watching for a bucket it cannot read (see unreadableAfter).
const readSpins = 64

// unreadableAfter is how long Get looks again at an entry it cannot read
// that does not change (a sequence left odd, by bytes written from outside
// the cache's writers, under a map that names it) before it misses. An
// entry that changes is being written by the cache's writers, who make
// progress: Get looks again for as long as that lasts, as a seqlock's
// reader does. (Only Sets of one bucket back to back, of values that take
// longer to copy than to write, keep it looking for long.)
const unreadableAfter = time.Millisecond

// find looks for key in bucket b, as Get does. When it must look again it
// also returns what it saw: a digest of the map word and the sequence of
// the entry it could not read.
func (c *Cache) find(b int, h uint64, key, dst []byte) ([]byte, result, uint64) {
	bk := c.bucket(b)
	tag := tagOf(h)
	for half := range 2 {
		m := atomic.LoadUint64(&bk[half])
		for cand := match(m, tag); cand != 0; cand &= cand - 1 {
			lane := bits.TrailingZeros64(cand) / wayBits
			w := half*4 + lane
			wb := m >> (wayBits * lane) & (1<<wayBits - 1)
			e := int(wb&wayEntry) ^ w
			// match may also name the way above one whose tag is the
			// key's: an empty way among them still names an entry,
			// which holds what was deleted from it.
			if wb&^wayEntry != tag || e > Ways {
				continue // or a map written from outside: nothing to read
			}
			if v, r, seq := c.read(c.entry(b, e), &bk[half], lane, wb, h, key, dst); r != miss {
				return v, r, m*0x9E3779B97F4A7C15 ^ seq
			}
		}
	}
	return dst, miss, 0
}

// read reads entry en, which way bits wb of the map word at mw named, and
// says whether it holds key. Its verdict holds only if the entry's sequence
// is even and has not moved, and the way still names the entry, once it
// has read: then at that moment the entry was published (only the spare is
// ever written, and a way names an entry only once it is whole), and what
// was read is what it held. Otherwise the entry was rewritten, and the way
// renamed, since the map was loaded, and Get looks again.
func (c *Cache) read(en []uint64, mw *uint64, lane int, wb, h uint64, key, dst []byte) ([]byte, result, uint64) {
	s := atomic.LoadUint64(&en[wordSeq])
	if s&1 != 0 {
		return dst, again, s
	}
	n := len(dst)
	r := miss
	lens := atomic.LoadUint64(&en[wordLens])
	klen, vlen := int(uint32(lens)), int(lens>>32)
	expires := int64(atomic.LoadUint64(&en[wordExpires]))
	if atomic.LoadUint64(&en[wordHash]) == h && klen == len(key) && vlen <= c.maxValue &&
		words.Equal(en[entryHead:], key) {
		r = hit
		dst = slices.Grow(dst, vlen)[:n+vlen]
		words.LoadBytes(dst[n:], en[entryHead+c.keyWords:])
	}
	if atomic.LoadUint64(mw)>>(wayBits*lane)&(1<<wayBits-1) != wb {
		return dst[:n], again, s
	}
	if s2 := atomic.LoadUint64(&en[wordSeq]); s2 != s {
		return dst[:n], again, s2
	}
	if r == hit {
		if expires != never && time.Now().UnixNano() >= expires {
			return dst[:n], miss, 0
		}
		if atomic.LoadUint64(&en[wordUsed]) == 0 {
			atomic.StoreUint64(&en[wordUsed], 1)
		}
	}
	return dst, r, 0
}
