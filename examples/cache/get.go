package cache

import (
	"context"
	"errors"
	"math/bits"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/internal/words"
	"github.com/shmlock/shmlock/shm"
)

// Get appends key's value to dst and reports whether the key was there and
// not expired. It takes no lock and waits for no writer, live or dead,
// unless writers keep rewriting the entry it reads faster than it can copy
// it (values that take longer to copy than to write): then, after
// unreadableAfter, it reads under the shard's lock, for which it waits at
// most lockedWait. It writes nothing that other processes write: the
// entry's used mark, once the hand has cleared it, and this process's
// counters.
func (c *Cache) Get(key, dst []byte) ([]byte, bool) {
	if len(key) > c.maxKey || c.closed.Load() {
		return dst, false
	}
	h := c.hash(key)
	b := c.bucketOf(h)
	v, r := c.look(b, h, key, dst)
	if r == again {
		v, r = c.lookLocked(b, h, key, dst)
	}
	switch r {
	case gone:
		return dst, false
	case hit:
		c.count(statHits)
		return v, true
	}
	c.count(statMisses)
	return dst, false
}

// look is find, again until it answers or unreadableAfter has passed since
// its first look; it yields between looks after readSpins.
func (c *Cache) look(b int, h uint64, key, dst []byte) ([]byte, result) {
	var since time.Time
	for tries := 0; ; tries++ {
		v, r := c.find(b, h, key, dst)
		if r != again {
			return v, r
		}
		if now := time.Now(); tries == 0 {
			since = now
		} else if now.Sub(since) > unreadableAfter {
			return dst, again
		}
		if tries >= readSpins {
			runtime.Gosched()
		}
	}
}

// lookLocked is Get's way out of a bucket it could not read for
// unreadableAfter: its writers rewrite the entry faster than Get copies it,
// or a sequence was left odd from outside the cache's writers. Under the
// shard's lock no writer writes, so find answers, or finds the odd
// sequence: a miss. A holder that keeps the lock past lockedWait is stopped,
// and so writes nothing: Get looks once more without it.
func (c *Cache) lookLocked(b int, h uint64, key, dst []byte) ([]byte, result) {
	ctx, cancel := context.WithTimeout(context.Background(), lockedWait)
	defer cancel()
	g, err := c.lock(ctx, b)
	if errors.Is(err, shm.ErrClosed) {
		// Close has begun, and unmaps the region once its waiters,
		// this one among them, are gone: touch none of it again.
		return dst, gone
	}
	if err != nil {
		return c.find(b, h, key, dst)
	}
	defer g.Release()
	v, r := c.find(b, h, key, dst)
	g.Commit()
	return v, r
}

type result uint8

const (
	miss  result = iota
	hit          // the value is appended
	again        // an entry changed while it was read: look again
	gone         // the region was closed while Get waited for a lock
)

// readSpins is how many times Get looks again before it yields.
const readSpins = 64

// unreadableAfter is how long Get looks again without a lock. Each look
// again means a writer rewrote an entry while Get read it, and a writer
// rewrites only the spare, so an entry Get reads is rewritten only after
// two writes to its bucket: only Sets of one bucket back to back, of values
// that take longer to copy than to write, or bytes written from outside,
// make a Get look again this long.
const unreadableAfter = time.Millisecond

// lockedWait bounds Get's wait for a shard's lock: longer than a waiter
// takes to have the lock handed to it from writers that take it back to
// back (the lock's starvation mode), shorter than a Get should ever take.
const lockedWait = 50 * time.Millisecond

// find looks for key in bucket b once, as Get does.
func (c *Cache) find(b int, h uint64, key, dst []byte) ([]byte, result) {
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
			if v, r := c.read(c.entry(b, e), &bk[half], lane, wb, h, key, dst); r != miss {
				return v, r
			}
		}
	}
	return dst, miss
}

// read reads entry en, which way bits wb of the map word at mw named, and
// says whether it holds key. Its verdict holds only if the entry's sequence
// is even and has not moved, and the way still names the entry, once it
// has read: then at that moment the entry was published (only the spare is
// ever written, and a way names an entry only once it is whole), and what
// was read is what it held. Otherwise the entry was rewritten, and the way
// renamed, since the map was loaded, and Get looks again.
func (c *Cache) read(en []uint64, mw *uint64, lane int, wb, h uint64, key, dst []byte) ([]byte, result) {
	s := atomic.LoadUint64(&en[wordSeq])
	if s&1 != 0 {
		return dst, again
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
	if atomic.LoadUint64(mw)>>(wayBits*lane)&(1<<wayBits-1) != wb || atomic.LoadUint64(&en[wordSeq]) != s {
		return dst[:n], again
	}
	if r == hit {
		if expires != never && time.Now().UnixNano() >= expires {
			return dst[:n], miss
		}
		if atomic.LoadUint64(&en[wordUsed]) == 0 {
			atomic.StoreUint64(&en[wordUsed], 1)
		}
	}
	return dst, r
}
