// Package cache is a fixed-capacity key→value cache in one shared-memory
// region, shared by any number of processes, built on shmlock: an example of
// the library in the use it was made for, and a proof that it holds up there.
//
// The cache is a table of buckets. A key's hash names its bucket and a
// 12-bit tag; the bucket has Ways ways, each naming one of its entries by
// tag, and one entry more than it has ways, which no way names: the spare.
//
// Get takes no lock. It loads the bucket's map, and reads only the entries
// whose tag is the key's (one, and in about one Get of 512 another), each
// between two loads of the entry's sequence; it keeps what it read only if
// the sequence did not move and the way still names that entry. So it never
// returns a value that no Set stored whole, nor one that a Set that died
// stored and never published. Only if writers rewrite the entry under it
// for a millisecond (values that take longer to copy than to write, Set
// back to back) does it read under the shard's lock instead, waiting for
// it 50 ms at most.
//
// Writers (Set, Delete) lock the bucket's shard: a robust shmlock.Mutex that
// covers every Shards-th bucket, so writers of keys in different shards do
// not meet. Set writes the key and value into the spare entry and then
// publishes it by one store of the map, which makes the way name the new
// entry and the entry it named the spare. A writer killed at any point
// leaves the bucket as it was or as it meant it to be, so the next writer of
// the shard takes the lock over (Stats.Takeovers) and has nothing to repair.
//
// A key lives in at most one way of its bucket. Set overwrites the key's way
// if it has one, else fills an empty way, else one whose entry has expired,
// else evicts by CLOCK: Get marks the entries it returns as used, and the
// writer's hand passes over used entries once, clearing the mark, and evicts
// the first that is not.
//
// Stats sums the counters every process keeps; Inspect reads them, and the
// shards' locks, from any process without opening the cache, and the
// cachestat command (cmd/cachestat) prints them.
package cache

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"unsafe"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/closing"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// Ways is how many entries of its bucket a key may live in.
const Ways = 8

// DefaultShards is the number of writers' locks when Options.Shards is 0
// (fewer if the cache has fewer buckets).
const DefaultShards = 64

// Options describe a cache. Every process that opens one cache must give the
// same Options (else Open fails with ErrMismatch).
type Options struct {
	Capacity int // entries; rounded up to a multiple of Ways
	MaxKey   int // longest key in bytes; at least 1
	MaxValue int // longest value in bytes
	// Shards is how many writers' locks the buckets are spread over;
	// 0 means DefaultShards. At most the number of buckets is used.
	Shards int
	// Region is passed to shm.Open, with the cache's Layout in it (any
	// other is replaced); Slots there bounds how many processes may have
	// the cache open at once.
	Region shm.Options
}

var (
	// ErrTooLong: a key or value longer than the cache's MaxKey or MaxValue.
	ErrTooLong = errors.New("cache: key or value too long")
	// ErrMismatch: the region holds a cache of other dimensions, or no cache.
	ErrMismatch = errors.New("cache: region holds a cache of other dimensions")
	// ErrOptions: Options that describe no cache.
	ErrOptions = errors.New("cache: bad options")
)

// A bucket is one line: its map in words 0 and 1, four ways a word, 16 bits
// a way; its CLOCK hand in word 2; and in word 3 its soonest expiry, a
// lower bound on when the first entry its ways name expires (0: none has a
// TTL), so that a writer that seeks a way to evict reads the entries'
// expiries only once one may have expired. Zero bytes are an empty bucket.
//
//	bits   meaning
//	0..3   the way's entry, XOR the way's number (so zeros name entry w from way w)
//	4..15  the tag of the key in the way: 12 bits of its hash, never 0; 0: the way is empty
//
// The entries a bucket's ways name are distinct; the one they do not name,
// of the Ways+1, is the spare. Only a writer holding the bucket's shard
// stores a map word, and it stores it whole.
const (
	bucketWords = shm.LineSize / 8
	wayBits     = 16
	wayEntry    = 1<<4 - 1
	tagShift    = 4
	tagMask     = 1<<12 - 1
	wordHand    = 2
	wordSoonest = 3
	lanes       = 0x0001_0001_0001_0001 // one in each way of a map word
)

// An entry is whole lines of words:
//
//	word  meaning
//	0     sequence: odd while a writer writes the entry
//	1     used: nonzero if a Get returned the entry since the hand passed it (outside the sequence)
//	2     expires: Unix ns after which the entry is gone; math.MaxInt64: never
//	3     the key's hash
//	4     the key's length (low 32 bits) and the value's (high 32)
//	5...  the key, then the value, each from a word boundary
const (
	wordSeq = iota
	wordUsed
	wordExpires
	wordHash
	wordLens
	entryHead // words
)

const never = math.MaxInt64

// The counters of one process's stats line.
const (
	statHits = iota
	statMisses
	statSets
	statDeletes
	statEvictions
	statExpirations
	statTakeovers
	statRepairs
	numStats
)

// Cache is one process's handle on a shared cache. Its methods are safe for
// concurrent use by goroutines.
type Cache struct {
	r        *shm.Region
	shards   []*shmlock.Mutex
	buckets  []uint64 // bucketWords a bucket
	entries  []uint64 // (Ways+1)*entryWords a bucket
	stats    []uint64 // numStats a process slot, on a line of its own
	mine     []uint64 // this process's counters
	nb       uint64   // buckets
	seed     uint64
	maxKey   int
	maxValue int
	keyWords int // words of key in an entry
	entryW   int // words an entry
	closed   atomic.Bool
}

// dims are the numbers a cache's layout follows from.
type dims struct {
	nb, shards, statSlots, keyWords, entryW int
}

// entryBytes is the size of the entries' object.
func (d dims) entryBytes() int { return d.nb * (Ways + 1) * d.entryW * 8 }

func (o Options) dims() (dims, error) {
	if o.Capacity < 1 || o.MaxKey < 1 || o.MaxValue < 0 || o.Shards < 0 ||
		o.MaxKey > math.MaxInt32 || o.MaxValue > math.MaxInt32 || o.Capacity > math.MaxInt32 {
		return dims{}, fmt.Errorf("%w: %+v", ErrOptions, o)
	}
	d := dims{nb: (o.Capacity + Ways - 1) / Ways, shards: o.Shards, statSlots: o.Region.Slots, keyWords: (o.MaxKey + 7) / 8}
	if d.shards == 0 {
		d.shards = DefaultShards
	}
	d.shards = min(d.shards, d.nb)
	if d.statSlots == 0 {
		d.statSlots = shm.DefaultSlots
	}
	d.entryW = (entryHead + d.keyWords + (o.MaxValue+7)/8 + bucketWords - 1) / bucketWords * bucketWords
	return d, nil
}

// offsets are where a cache's objects begin in its region's data.
type offsets struct{ header, shards, stats, buckets, entries int }

// layout declares the cache's objects: its header (first, where Inspect
// looks for it), the writers' locks, the processes' stats lines, the
// buckets and the entries. The buckets' name carries the cache's
// dimensions, so a region made for other ones, or for something else, has
// another layout, which Open refuses (shm.ErrLayout) before it writes
// anything.
func (o Options) layout(d dims) (*shm.Layout, offsets) {
	l := new(shm.Layout)
	var at offsets
	at.header = l.Data("cache header", shm.LineSize)
	at.shards = l.Locks("cache shards", d.shards, shmlock.Size)
	at.stats = l.Data("cache stats", d.statSlots*shm.LineSize)
	name := fmt.Sprintf("cache buckets: %d of %d ways, keys of at most %d bytes, values of at most %d",
		d.nb, Ways, o.MaxKey, o.MaxValue)
	at.buckets = l.Data(name, d.nb*shm.LineSize)
	at.entries = l.Data("cache entries", d.entryBytes())
	return l, at
}

// Size returns the data bytes a cache of these dimensions needs.
func (o Options) Size() int {
	d, err := o.dims()
	if err != nil {
		return 0
	}
	_, at := o.layout(d)
	return at.entries + d.entryBytes()
}

// Open opens the cache in the region at name (see shm.Open), creating it if
// need be.
func Open(name string, opt Options) (*Cache, error) {
	d, err := opt.dims()
	if err != nil {
		return nil, err
	}
	ro := opt.Region
	l, at := opt.layout(d)
	ro.Layout = l
	r, err := shm.Open(name, ro)
	if errors.Is(err, shm.ErrLayout) {
		return nil, fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	if err != nil {
		return nil, err
	}
	c := &Cache{r: r, nb: uint64(d.nb), maxKey: opt.MaxKey, maxValue: opt.MaxValue,
		keyWords: d.keyWords, entryW: d.entryW}
	if err := c.init(d, at); err != nil {
		r.Close()
		return nil, err
	}
	if err := writeHeader(r, at.header, d, opt); err != nil {
		r.Close()
		return nil, err
	}
	closing.Track(closing.Of(r), c, (*Cache).letGo)
	return c, nil
}

func (c *Cache) init(d dims, at offsets) error {
	c.shards = make([]*shmlock.Mutex, d.shards)
	for i := range c.shards {
		var err error
		if c.shards[i], err = shmlock.New(c.r, at.shards+i*shmlock.Size); err != nil {
			return err
		}
	}
	if err := c.view(d, at); err != nil {
		return err
	}
	slot := region.Of(c.r).Slot() % d.statSlots
	c.mine = c.stats[slot*bucketWords : slot*bucketWords+numStats]
	return nil
}

// view points c at the shared words of region c.r, and seeds its hash.
func (c *Cache) view(d dims, at offsets) error {
	var err error
	if c.stats, err = wordsOf(c.r, at.stats, d.statSlots*shm.LineSize); err != nil {
		return err
	}
	if c.buckets, err = wordsOf(c.r, at.buckets, d.nb*shm.LineSize); err != nil {
		return err
	}
	if c.entries, err = wordsOf(c.r, at.entries, d.entryBytes()); err != nil {
		return err
	}
	// The hash is the same in every process attached to this region, and
	// another in the next region of the same name.
	born, pid := region.Of(c.r).Created()
	c.seed = mix(uint64(born.UnixNano())^uint64(pid)<<32, 0x9E3779B97F4A7C15)
	return nil
}

// letGo runs at the region's Close: Get misses from then on, without
// touching the unmapped memory, and the writers' locks report ErrClosed.
func (c *Cache) letGo() { c.closed.Store(true) }

// Close detaches this process from the cache. Uses of the Cache that begin
// after Close are misses (Get) and errors matching shm.ErrClosed (Set,
// Delete); uses concurrent with it are a race, as for shm.Region.Close.
func (c *Cache) Close() error { return c.r.Close() }

// Region returns the region the cache lives in (for inspection).
func (c *Cache) Region() *shm.Region { return c.r }

// Writers returns the state of each shard's writers' lock: who holds it,
// alive or not, and how often it was taken over from a dead writer.
func (c *Cache) Writers() []shmlock.State {
	s := make([]shmlock.State, len(c.shards))
	for i, m := range c.shards {
		s[i] = m.Inspect()
	}
	return s
}

func (c *Cache) count(stat int) { atomic.AddUint64(&c.mine[stat], 1) }

// hash is a 64-bit hash of key, seeded by the region: the same in every
// process attached to it (maphash seeds are not), and unknown to whoever
// chooses keys without reading the region.
func (c *Cache) hash(key []byte) uint64 {
	h := c.seed ^ uint64(len(key))*0xA0761D6478BD642F
	for ; len(key) >= 8; key = key[8:] {
		h = mix(h^le64(key), 0xE7037ED1A0B428DB)
	}
	if len(key) > 0 {
		var b [8]byte
		copy(b[:], key)
		h = mix(h^le64(b[:]), 0x8EBC6AF09C88C6E3)
	}
	return mix(h, 0x589965CC75374CC3)
}

func le64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// bucketOf returns the bucket of hash h: its high bits, scaled to the table.
func (c *Cache) bucketOf(h uint64) int {
	b, _ := bits.Mul64(h, c.nb)
	return int(b)
}

// tagOf returns the tag of hash h, in place in a way's bits: its low 12
// bits, and 1 if those are 0.
func tagOf(h uint64) uint64 {
	t := h & tagMask
	t |= (t - 1) >> 63 // 0 → 1
	return t << tagShift
}

// match returns the ways of map word m whose tag is tag: bit 15 of each
// such way's 16 bits set. It may also name a way just above one that
// matches (the borrow of the subtraction); the caller compares keys.
func match(m, tag uint64) uint64 {
	x := (m ^ tag*lanes) &^ (wayEntry * lanes)
	return (x - 1<<tagShift*lanes) &^ x & (1 << (wayBits - 1) * lanes)
}

func (c *Cache) bucket(b int) []uint64 {
	return c.buckets[b*bucketWords : b*bucketWords+bucketWords : b*bucketWords+bucketWords]
}

func (c *Cache) entry(b, e int) []uint64 {
	i := (b*(Ways+1) + e) * c.entryW
	return c.entries[i : i+c.entryW : i+c.entryW]
}

// way returns way w's 16 bits of map m, and the entry they name.
func way(m [2]uint64, w int) (bits uint64, e int) {
	bits = m[w/4] >> (wayBits * (w % 4)) & (1<<wayBits - 1)
	return bits, int(bits&wayEntry) ^ w
}

func wordsOf(r *shm.Region, off, n int) ([]uint64, error) {
	b, err := r.Bytes(off, n)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n/8), nil
}
