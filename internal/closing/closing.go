// Package closing is how a region's objects let go of its memory when it is
// closed, so that a use after Close is an error, not a fault, while their
// fast paths stay as they are.
//
// An object that points into a region's mapping (a Mutex's owner word, a
// SeqLock's sequence) is tracked at construction. Close, before the memory
// is unmapped:
//
//  1. marks the region closed; every slow path checks the mark first;
//  2. wakes every goroutine asleep on one of the region's words in a slow
//     path, and waits for each to see the mark and leave;
//  3. points every tracked object that is still alive at a Sentinel, memory
//     of this process whose words send each fast path to its slow path: an
//     owner word that is held (and never equal to a word a holder
//     installed, whose bit 30 is clear), sequences that are odd.
//
// So after Close a fast path never touches the unmapped memory: it reads the
// sentinel, fails, and the slow path reports the region closed. A fast path
// that runs concurrently with Close is a race the caller must not start
// (Region.Close says so): it may touch the memory as it goes.
package closing

import (
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/shmlock/shmlock/internal/futex"
)

// Of returns the Closing of a region (a *shm.Region); package shm sets it.
var Of func(region any) *Closing

// Sentinel returns a line of this process's memory for a closed object to
// point at: all bits set. Each object gets a line of its own, so that a write
// through one (by a use that raced with Close) reaches no other.
func Sentinel() *[8]uint64 {
	l := new([8]uint64)
	for i := range l {
		l[i] = ^uint64(0)
	}
	return l
}

// Closing is the closing state of one region.
type Closing struct {
	closed  atomic.Bool
	mu      sync.Mutex
	objs    []tracked
	live    int             // objects alive at the last sweep
	waiters map[*uint32]int // words slept on in slow paths, and by how many
	done    chan struct{}   // closed when Close begins; made on first use
}

type tracked struct {
	alive   func() bool
	release func()
}

// Closed reports whether Close has begun.
func (c *Closing) Closed() bool { return c.closed.Load() }

// Done returns a channel that is closed when Close begins, for slow paths that
// wait on something other than a word of the region.
func (c *Closing) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{}) // Close closes it, under mu
	}
	return c.done
}

// Track has release called with p at Close, if p is still alive then. It
// holds p weakly: tracking never keeps an object alive, and the entries of
// objects gone are dropped as more are tracked.
func Track[T any](c *Closing, p *T, release func(*T)) {
	w := weak.Make(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.objs) >= 2*c.live+64 {
		kept := c.objs[:0]
		for _, o := range c.objs {
			if o.alive() {
				kept = append(kept, o)
			}
		}
		clear(c.objs[len(kept):])
		c.objs, c.live = kept, len(kept)
	}
	c.objs = append(c.objs, tracked{
		alive: func() bool { return w.Value() != nil },
		release: func() {
			if p := w.Value(); p != nil {
				release(p)
			}
		},
	})
}

// Enter tells that a slow path may sleep on w until it Leaves; it reports
// false, and registers nothing, if the region is closed.
func (c *Closing) Enter(w *uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	if c.waiters == nil {
		c.waiters = map[*uint32]int{}
	}
	c.waiters[w]++
	return true
}

// Leave ends what Enter began.
func (c *Closing) Leave(w *uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiters[w]--; c.waiters[w] == 0 {
		delete(c.waiters, w)
	}
}

// Close marks the region closed, wakes and waits out the slow paths asleep on
// its words, then points the tracked objects at Sentinel. It returns false if
// Close had begun already.
func (c *Closing) Close() bool {
	if !c.closed.CompareAndSwap(false, true) {
		return false
	}
	c.mu.Lock()
	if c.done == nil {
		c.done = make(chan struct{})
	}
	close(c.done)
	c.mu.Unlock()
	// A waiter that checked the mark just before it was set may fall
	// asleep after a wake: wake again until every one has left.
	for {
		c.mu.Lock()
		n := len(c.waiters)
		for w := range c.waiters {
			futex.Wake(w, 1<<30)
		}
		c.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	c.mu.Lock()
	objs := c.objs
	c.objs = nil
	c.mu.Unlock()
	for _, o := range objs {
		o.release()
	}
	return true
}
