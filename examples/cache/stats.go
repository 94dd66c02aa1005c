package cache

import (
	"sync/atomic"
	"time"
)

// Stats are a cache's counters, summed over every process that has had it
// open, and what it holds now.
type Stats struct {
	Hits, Misses uint64 // Gets
	Sets         uint64
	Deletes      uint64 // of keys that were there
	Evictions    uint64 // live entries a Set displaced
	Expirations  uint64 // expired entries a Set replaced (of their key or another)
	// Takeovers counts writers that took a shard's lock over from a
	// writer that died holding it (less any taker killed before it
	// counted; Writers' Recoveries are the locks' own counts).
	Takeovers uint64
	// Repairs counts buckets whose map was found written from outside
	// the cache's writers, and emptied.
	Repairs uint64
	// Entries is how many entries are live (not expired) now; Capacity
	// how many there can be.
	Entries, Capacity int
}

// Stats returns the cache's counters and its entries now. Each process
// counts on a line of the region of its own, indexed by its slot of the
// region's process table: the counts of processes gone stay there, and the
// next process in the slot adds to them. It reads every bucket, and every
// entry a way names.
func (c *Cache) Stats() Stats {
	var s Stats
	for i := 0; i+numStats <= len(c.stats); i += bucketWords {
		l := c.stats[i : i+numStats]
		for j, p := range []*uint64{&s.Hits, &s.Misses, &s.Sets, &s.Deletes, &s.Evictions, &s.Expirations, &s.Takeovers, &s.Repairs} {
			*p += atomic.LoadUint64(&l[j])
		}
	}
	now := time.Now().UnixNano()
	for b := range int(c.nb) {
		bk := c.bucket(b)
		m := [2]uint64{atomic.LoadUint64(&bk[0]), atomic.LoadUint64(&bk[1])}
		for w := range Ways {
			if wb, e := way(m, w); wb&^wayEntry != 0 && e <= Ways &&
				now < int64(atomic.LoadUint64(&c.entry(b, e)[wordExpires])) {
				s.Entries++
			}
		}
	}
	s.Capacity = int(c.nb) * Ways
	return s
}
