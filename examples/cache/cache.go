// Package cache is a fixed-capacity key→value cache in one shared-memory
// region, shared by any number of processes, built on shmlock: an example of
// the library in the use it was made for, and a proof that it holds up there.
//
// Every slot of the cache is a seqlock.Record holding one entry whole: its
// key, its value and its expiry. Readers take no lock: Get reads the slots a
// key may live in, each with one Record read, which is never torn and never
// waits for a writer. Writers (Set, Delete) exclude each other with one
// robust shmlock.Mutex and change one slot per call, by publishing the
// Record's other copy; so a writer killed at any point leaves every slot
// either as it was or as it meant it to be, and the next writer takes the
// lock over from the dead one.
//
// A key lives in at most one slot: the window of Window slots after its hash.
// Set overwrites the key's slot if it has one, else fills an empty or expired
// slot of the window, else evicts the window's entry that expires first.
package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// Window is how many slots a key may live in, from the one its hash names.
const Window = 8

// Options describe a cache. Every process that opens one cache must give the
// same Capacity, MaxKey and MaxValue (else Open fails with ErrMismatch).
type Options struct {
	Capacity int // entries; at least 1
	MaxKey   int // longest key in bytes; at least 1
	MaxValue int // longest value in bytes
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
)

// The data area is a shm.Layout: the writers' Mutex, then the slots, an
// array of Records. The slots' name carries the cache's dimensions, so a
// region made for other ones, or for something else, has another layout,
// which Open refuses (shm.ErrLayout) before it writes anything.
//
//	writers' Mutex
//	slot i: a Record of slotBytes:
//	  0  expires  int64   Unix ns after which the entry is gone; 0: empty
//	  8  hash     uint64  of the key
//	 16  keyLen   uint32
//	 20  valLen   uint32
//	 24  key, then value (maxKey + maxValue bytes)
const entryHead = 24

// layout declares the cache's objects and returns them with the offsets of
// the writers' Mutex and of the first slot.
func (o Options) layout() (l *shm.Layout, mu, slots int) {
	l = new(shm.Layout)
	mu = l.Lock("cache writers", shmlock.Size)
	name := fmt.Sprintf("cache slots: %d entries, keys of at most %d bytes, values of at most %d", o.Capacity, o.MaxKey, o.MaxValue)
	slots = l.Locks(name, o.Capacity, seqlock.RecordSize(o.slotBytes()))
	return l, mu, slots
}

// Cache is one process's handle on a shared cache. Its methods are safe for
// concurrent use by goroutines.
type Cache struct {
	r         *shm.Region
	mu        *shmlock.Mutex
	slots     []*seqlock.Record
	maxKey    int
	maxValue  int
	slotBytes int
	bufs      sync.Pool // *[]byte of slotBytes
}

// Size returns the data bytes a cache of these dimensions needs.
func (o Options) Size() int {
	_, _, slots := o.layout()
	return slots + o.Capacity*seqlock.RecordSize(o.slotBytes())
}

func (o Options) slotBytes() int { return (entryHead + o.MaxKey + o.MaxValue + 7) / 8 * 8 }

// Open opens the cache in the region at name (see shm.Open), creating it if
// need be.
func Open(name string, opt Options) (*Cache, error) {
	if opt.Capacity < 1 || opt.MaxKey < 1 || opt.MaxValue < 0 || int64(opt.MaxKey) > math.MaxUint32 || int64(opt.MaxValue) > math.MaxUint32 {
		return nil, fmt.Errorf("cache: bad options %+v", opt)
	}
	ro := opt.Region
	l, mu, slots := opt.layout()
	ro.Layout = l
	r, err := shm.Open(name, ro)
	if errors.Is(err, shm.ErrLayout) {
		return nil, fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	if err != nil {
		return nil, err
	}
	c := &Cache{r: r, maxKey: opt.MaxKey, maxValue: opt.MaxValue, slotBytes: opt.slotBytes()}
	if err := c.init(opt, mu, slots); err != nil {
		r.Close()
		return nil, err
	}
	c.bufs.New = func() any { b := make([]byte, c.slotBytes); return &b }
	return c, nil
}

func (c *Cache) init(opt Options, mu, slots int) error {
	var err error
	if c.mu, err = shmlock.New(c.r, mu); err != nil {
		return err
	}
	c.slots = make([]*seqlock.Record, opt.Capacity)
	for i := range c.slots {
		if c.slots[i], err = seqlock.NewRecord(c.r, slots+i*seqlock.RecordSize(c.slotBytes), c.slotBytes); err != nil {
			return err
		}
	}
	return nil
}

// Close detaches this process from the cache.
func (c *Cache) Close() error { return c.r.Close() }

// Region returns the region the cache lives in (for inspection).
func (c *Cache) Region() *shm.Region { return c.r }

// Recoveries returns how many times a writer took the writers' lock over
// from a writer that died holding it.
func (c *Cache) Recoveries() uint64 { return c.mu.Inspect().Recoveries }

// Writers returns the state of the writers' lock: who holds it, alive or not.
func (c *Cache) Writers() shmlock.State { return c.mu.Inspect() }

// hash is 64-bit FNV-1a: the same in every process (maphash seeds are not).
func hash(key []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, b := range key {
		h ^= uint64(b)
		h *= 1099511628211
	}
	return h
}

func (c *Cache) window(h uint64) (first, n int) {
	return int(h % uint64(len(c.slots))), min(Window, len(c.slots))
}

func (c *Cache) slot(first, i int) *seqlock.Record { return c.slots[(first+i)%len(c.slots)] }

// entry is a slot's bytes, read whole.
type entry []byte

func (e entry) expires() int64 { return int64(binary.NativeEndian.Uint64(e[0:])) }
func (e entry) hash() uint64   { return binary.NativeEndian.Uint64(e[8:]) }
func (e entry) key() []byte    { return e[entryHead : entryHead+int(binary.NativeEndian.Uint32(e[16:]))] }
func (e entry) value(maxKey int) []byte {
	return e[entryHead+maxKey : entryHead+maxKey+int(binary.NativeEndian.Uint32(e[20:]))]
}
func (e entry) live(now int64) bool { return e.expires() != 0 && now < e.expires() }

// matches says whether e holds key. The lengths are checked against the
// slot's size first: a slot's bytes are whole, but the cache does not trust
// a region's contents to be its own.
func (c *Cache) matches(e entry, h uint64, key []byte) bool {
	return e.hash() == h && int(binary.NativeEndian.Uint32(e[16:])) == len(key) &&
		int(binary.NativeEndian.Uint32(e[20:])) <= c.maxValue && bytes.Equal(e.key(), key)
}

// Get appends key's value to dst and reports whether the key was there and
// not expired. It takes no lock and writes nothing to shared memory; it
// never returns a value that no Set stored whole.
func (c *Cache) Get(key, dst []byte) ([]byte, bool) {
	if len(key) > c.maxKey {
		return dst, false
	}
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	e := entry(*bp)
	h := hash(key)
	now := time.Now().UnixNano()
	first, n := c.window(h)
	for i := range n {
		if c.slot(first, i).Read(e) != nil {
			continue // corrupt (written from outside): holds nothing we trust
		}
		if c.matches(e, h, key) {
			if !e.live(now) {
				return dst, false
			}
			return append(dst, e.value(c.maxKey)...), true
		}
	}
	return dst, false
}

// Set stores value under key for ttl (ttl <= 0: until evicted or deleted).
// It waits for the writers' lock until ctx is done.
func (c *Cache) Set(ctx context.Context, key, value []byte, ttl time.Duration) error {
	if len(key) > c.maxKey || len(value) > c.maxValue {
		return fmt.Errorf("%w: key %d bytes (max %d), value %d bytes (max %d)", ErrTooLong, len(key), c.maxKey, len(value), c.maxValue)
	}
	expires := int64(math.MaxInt64)
	if now := time.Now().UnixNano(); ttl > 0 && int64(ttl) < math.MaxInt64-now {
		expires = now + int64(ttl)
	}
	return c.write(ctx, key, func(e entry) {
		clear(e)
		binary.NativeEndian.PutUint64(e[0:], uint64(expires))
		binary.NativeEndian.PutUint64(e[8:], hash(key))
		binary.NativeEndian.PutUint32(e[16:], uint32(len(key)))
		binary.NativeEndian.PutUint32(e[20:], uint32(len(value)))
		copy(e[entryHead:], key)
		copy(e[entryHead+c.maxKey:], value)
	}, true)
}

// Delete removes key, if it is there.
func (c *Cache) Delete(ctx context.Context, key []byte) error {
	if len(key) > c.maxKey {
		return nil
	}
	return c.write(ctx, key, func(e entry) { clear(e) }, false)
}

// write finds key's slot (or, if insert, a slot for it) under the writers'
// lock and replaces that slot's entry with what fill makes of it.
func (c *Cache) write(ctx context.Context, key []byte, fill func(entry), insert bool) error {
	g, err := c.mu.Acquire(ctx)
	if err != nil {
		return err
	}
	defer g.Release()
	// A writer that died holding the lock changed at most one slot, and
	// each slot is a Record: whole before or whole after. Nothing to repair.
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	e := entry(*bp)
	h := hash(key)
	now := time.Now().UnixNano()
	first, n := c.window(h)
	// With no free slot, evict the entry that expires first (the window's
	// first, if none ever expires).
	target, free, oldest := -1, -1, 0
	oldestExp := int64(math.MaxInt64)
	for i := range n {
		err := c.slot(first, i).Read(e)
		switch {
		case err != nil:
			// Corrupt (written from outside): free, and the Update
			// below repairs it if it is the one we write.
			if free < 0 {
				free = i
			}
		case c.matches(e, h, key):
			target = i
		case !e.live(now):
			if free < 0 {
				free = i
			}
		case e.expires() < oldestExp:
			oldest, oldestExp = i, e.expires()
		}
		if target >= 0 {
			break
		}
	}
	switch {
	case target >= 0:
	case !insert:
		g.Commit()
		return nil
	case free >= 0:
		target = free
	default:
		target = oldest
	}
	u, err := c.slot(first, target).Write(ctx)
	if err != nil {
		return err
	}
	defer u.Release()
	fill(e)
	if err := u.Store(e); err != nil {
		return err
	}
	u.Commit()
	g.Commit()
	return nil
}
