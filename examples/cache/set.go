package cache

import (
	"context"
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock/guard"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/words"
)

// Set stores value under key for ttl (ttl <= 0: until evicted or deleted).
// It waits for the key's shard's lock until ctx is done.
func (c *Cache) Set(ctx context.Context, key, value []byte, ttl time.Duration) error {
	if len(key) > c.maxKey || len(value) > c.maxValue {
		return fmt.Errorf("%w: key %d bytes (max %d), value %d bytes (max %d)", ErrTooLong, len(key), c.maxKey, len(value), c.maxValue)
	}
	expires := int64(never)
	if ttl > 0 {
		if now := time.Now().UnixNano(); int64(ttl) < never-now {
			expires = now + int64(ttl)
		}
	}
	h := c.hash(key)
	b := c.bucketOf(h)
	g, err := c.lock(ctx, b)
	if err != nil {
		return err
	}
	defer g.Release()
	c.set(b, h, key, value, expires)
	g.Commit()
	return nil
}

// Delete removes key, if it is there. It waits for the key's shard's lock
// until ctx is done.
func (c *Cache) Delete(ctx context.Context, key []byte) error {
	if len(key) > c.maxKey {
		return nil
	}
	h := c.hash(key)
	b := c.bucketOf(h)
	g, err := c.lock(ctx, b)
	if err != nil {
		return err
	}
	defer g.Release()
	bk := c.bucket(b)
	m, _ := c.mapOf(bk)
	if w, _ := c.lookup(b, m, h, key); w >= 0 {
		_, e := way(m, w)
		publish(bk, m, w, 0, e)
		c.count(statDeletes)
	}
	g.Commit()
	return nil
}

// lock takes bucket b's shard's lock, waiting until ctx is done, and counts
// a takeover from a writer that died holding it: one that left nothing to
// repair, since a writer writes only the spare and publishes by one store.
func (c *Cache) lock(ctx context.Context, b int) (guard.Guard, error) {
	g, err := c.shards[b%len(c.shards)].Acquire(ctx)
	if err == nil && g.Recovered() {
		c.count(statTakeovers)
	}
	return g, err
}

// set stores key and value in bucket b, whose shard the caller holds.
func (c *Cache) set(b int, h uint64, key, value []byte, expires int64) {
	bk := c.bucket(b)
	m, spare := c.mapOf(bk)
	w, used := c.lookup(b, m, h, key)
	var rest uint64 // the other entries' soonest expiry, if w's expired
	replaced := false
	if w < 0 {
		w, rest, replaced = c.victim(b, bk, m)
	} else if _, e := way(m, w); expired(c.entry(b, e)) {
		c.count(statExpirations)
	}
	c.write(c.entry(b, spare), h, key, value, expires, used)
	// The bound is lowered before the map names the entry, and raised
	// (past the expired entry replaced) only after: a writer that dies
	// between leaves it lower than need be, never above an entry's expiry.
	if soonest := atomic.LoadUint64(&bk[wordSoonest]); earliest(soonest, expires) != soonest {
		atomic.StoreUint64(&bk[wordSoonest], uint64(expires))
	}
	publish(bk, m, w, tagOf(h), spare)
	if replaced {
		atomic.StoreUint64(&bk[wordSoonest], earliest(rest, expires))
	}
	c.count(statSets)
}

// mapOf returns bucket bk's map and its spare entry. A map whose ways do
// not name distinct entries was written from outside the cache's writers:
// the bucket is emptied, and counted as repaired.
func (c *Cache) mapOf(bk []uint64) (m [2]uint64, spare int) {
	m = [2]uint64{atomic.LoadUint64(&bk[0]), atomic.LoadUint64(&bk[1])}
	var named uint32
	for w := range Ways {
		_, e := way(m, w)
		if e > Ways || named&(1<<e) != 0 {
			atomic.StoreUint64(&bk[0], 0)
			atomic.StoreUint64(&bk[1], 0)
			c.count(statRepairs)
			return [2]uint64{}, Ways
		}
		named |= 1 << e
	}
	return m, bits.TrailingZeros32(^named)
}

// lookup returns the way of bucket b (map m) that holds key, and its used
// mark; -1 if none does. The caller holds the shard: the entries the map
// names do not change.
func (c *Cache) lookup(b int, m [2]uint64, h uint64, key []byte) (int, uint64) {
	tag := tagOf(h)
	for half := range 2 {
		for cand := match(m[half], tag); cand != 0; cand &= cand - 1 {
			w := half*4 + bits.TrailingZeros64(cand)/wayBits
			if wb, e := way(m, w); wb&^wayEntry == tag {
				en := c.entry(b, e)
				if atomic.LoadUint64(&en[wordHash]) == h &&
					atomic.LoadUint64(&en[wordLens])&(1<<32-1) == uint64(len(key)) &&
					words.Equal(en[entryHead:], key) {
					return w, atomic.LoadUint64(&en[wordUsed])
				}
			}
		}
	}
	return -1, 0
}

// victim returns the way a new key takes in bucket b (map m): an empty one,
// else one whose entry has expired (then replaced, with the soonest expiry
// of the other entries, rest), else the first the CLOCK hand finds unused,
// clearing the used marks it passes.
func (c *Cache) victim(b int, bk []uint64, m [2]uint64) (w int, rest uint64, replaced bool) {
	for w := range Ways {
		if wb, _ := way(m, w); wb&^wayEntry == 0 {
			return w, 0, false
		}
	}
	if w, rest, ok := c.expiredWay(b, bk, m); ok {
		c.count(statExpirations)
		return w, rest, true
	}
	hand := int(atomic.LoadUint64(&bk[wordHand]) % Ways)
	// Readers may mark entries again behind the hand: after one turn and
	// one way it takes the way it is at.
	for range Ways + 1 {
		_, e := way(m, hand)
		used := &c.entry(b, e)[wordUsed]
		if atomic.LoadUint64(used) == 0 {
			break
		}
		atomic.StoreUint64(used, 0)
		hand = (hand + 1) % Ways
	}
	atomic.StoreUint64(&bk[wordHand], uint64(hand+1)%Ways)
	fault.Hit(fault.CacheHandMoved)
	c.count(statEvictions)
	return hand, 0, false
}

// expiredWay returns a way of bucket b (map m) whose entry has expired, if
// one has, and the soonest expiry of the other entries (0: none has a TTL).
// It reads the clock only if an entry has a TTL, and the entries only once
// the bucket's soonest expiry has passed; then it sets that bound anew, to
// the soonest of all the entries' expiries.
func (c *Cache) expiredWay(b int, bk []uint64, m [2]uint64) (int, uint64, bool) {
	soonest := atomic.LoadUint64(&bk[wordSoonest])
	if soonest == 0 {
		return 0, 0, false
	}
	now := time.Now().UnixNano()
	if soonest > uint64(now) {
		return 0, 0, false
	}
	found, rest, all := -1, uint64(0), uint64(0)
	for w := range Ways {
		_, e := way(m, w)
		exp := int64(atomic.LoadUint64(&c.entry(b, e)[wordExpires]))
		all = earliest(all, exp)
		if exp != never && now >= exp && found < 0 {
			found = w
		} else {
			rest = earliest(rest, exp)
		}
	}
	atomic.StoreUint64(&bk[wordSoonest], all)
	return found, rest, found >= 0
}

// earliest is the bound of a bucket whose bound was bound (0: no TTL) once
// it also holds an entry that expires at exp.
func earliest(bound uint64, exp int64) uint64 {
	if exp == never || bound != 0 && bound <= uint64(exp) {
		return bound
	}
	return uint64(exp)
}

// expired reports whether entry en has expired; it reads the clock only if
// en has a TTL.
func expired(en []uint64) bool {
	exp := int64(atomic.LoadUint64(&en[wordExpires]))
	return exp != never && time.Now().UnixNano() >= exp
}

// write writes the spare entry en. Its sequence is odd meanwhile, so that a
// reader that still reads it (from a map loaded before it was the spare)
// sees the change; a writer that died may have left it odd already.
func (c *Cache) write(en []uint64, h uint64, key, value []byte, expires int64, used uint64) {
	s := atomic.LoadUint64(&en[wordSeq])
	next := s | 1
	if next == s {
		next += 2
	}
	atomic.StoreUint64(&en[wordSeq], next)
	fault.Hit(fault.CacheEntryOdd)
	words.Store(en[wordUsed:entryHead], []uint64{used, uint64(expires), h, uint64(len(key)) | uint64(len(value))<<32})
	words.StoreBytes(en[entryHead:], key)
	words.StoreBytes(en[entryHead+c.keyWords:], value)
	atomic.StoreUint64(&en[wordSeq], next+1)
	fault.Hit(fault.CacheEntryWritten)
}

// publish makes way w of bucket bk (map m) hold tag in entry e: one store of
// the map word, after which the entry the way named before is the spare.
func publish(bk []uint64, m [2]uint64, w int, tag uint64, e int) {
	shift := wayBits * (w % 4)
	word := m[w/4]&^((1<<wayBits-1)<<shift) | (tag|uint64(e^w))<<shift
	atomic.StoreUint64(&bk[w/4], word)
	fault.Hit(fault.CachePublished)
}
