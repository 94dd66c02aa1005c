//go:build linux

package robust

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/line"
)

// One futex offset serves a whole list, and lists are shared by every region a
// process maps, so each mapping's entries must lie at one distance from its
// lock words. An arena makes it so: a reservation of address space (no
// memory, PROT_NONE) in two halves. A region file is mapped, shared, at some
// offset o of the first half, and its shadow, private and writable, at o of
// the second: the entry of the owner word at byte p of the mapping is at
// base + half + o + p, and its futex word at base + o + p + line.LowOffset, so
// the futex offset of every list of the arena is line.LowOffset - half, the
// same for every arena of one half: they share one pool of lists.
//
// The shadow costs nothing until an entry is written in it: a private page
// for every page of a mapping that holds a lock this process made. Closing a
// mapping returns both ranges to the reservation, which discards the pages.
//
//	arena:  [ data half: mappings, shared | shadow half: entries, private ]
//	         base                           base + half
//
// A range that a mapping leaves is reserved again, and given to another only
// after quarantine: a goroutine that used a lock of the closed region
// concurrently with Close (a race the caller must not start) may still hold
// an address in it, and it should fault there, not reach another region's
// lock. The quarantine ends early where a mapping would otherwise need a new
// arena.
//
// A process starts with no arena; the first robust mapping reserves one of
// defaultHalf a half (less where the address space is smaller, or limited).
// A mapping that fits no arena reserves another, of its own size if it is
// larger (with a pool of its own); an arena but the first that is left empty
// is given back.
var defaultHalf = func() uintptr {
	shift := uint(36) // 64 GiB
	if unsafe.Sizeof(uintptr(0)) < 8 {
		shift = 28 // 256 MiB of a 32-bit address space
	}
	return 1 << shift
}()

// Quarantine is how long a range a mapping left is kept from others, unless
// they need it.
const Quarantine = 10 * time.Second

// ErrAddressSpace: no arena could be reserved for a mapping of this size.
var ErrAddressSpace = errors.New("no address space for a robust mapping")

type arena struct {
	base unsafe.Pointer
	half uintptr
	free []span // free ranges of the data half, sorted by offset, coalesced
	held []span // ranges left, in quarantine until their time, oldest first
	live int    // mappings in it
	pool *pool
	// holed: a range of it was unmapped (release could not reserve it
	// again), where the kernel may have placed another mapping since, so
	// the arena is never unmapped whole.
	holed bool
}

type span struct {
	off, n uintptr
	until  time.Time // held: when it may be given again
}

// arenaSet is the process's arenas, and their pools.
type arenaSet struct {
	mu    sync.Mutex
	all   []*arena
	pools map[uintptr]*pool // by half
}

var arenas arenaSet

// Mapping is a region file mapped into an arena, with its shadow.
type Mapping struct {
	a    *arena
	off  uintptr // in the data half
	n    uintptr // length, in whole pages
	data []byte
}

func pageRound(n uintptr) uintptr {
	ps := uintptr(unix.Getpagesize())
	return (n + ps - 1) / ps * ps
}

// Map maps the first size bytes of the file fd, shared and writable, into an
// arena, and makes its shadow ready for list entries.
func Map(fd int, size int) (*Mapping, error) {
	if size <= 0 {
		return nil, fmt.Errorf("robust: mapping of %d bytes", size)
	}
	n := pageRound(uintptr(size))
	a, off, err := arenas.place(n)
	if err != nil {
		return nil, err
	}
	m := &Mapping{a: a, off: off, n: n}
	addr := unsafe.Add(a.base, off)
	if _, err := unix.MmapPtr(fd, 0, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		m.release()
		return nil, err
	}
	if err := unix.Mprotect(m.shadow(), unix.PROT_READ|unix.PROT_WRITE); err != nil {
		m.release()
		return nil, err
	}
	m.data = unsafe.Slice((*byte)(addr), size)
	return m, nil
}

// Bytes returns the mapping.
func (m *Mapping) Bytes() []byte { return m.data }

// shadow returns the mapping's shadow range.
func (m *Mapping) shadow() []byte {
	return unsafe.Slice((*byte)(unsafe.Add(m.a.base, m.a.half+m.off)), m.n)
}

// Entry returns the list entry for the 64-bit owner word at byte p of the
// mapping (8-aligned): the kernel finds the word's low half from it.
func (m *Mapping) Entry(p int) unsafe.Pointer {
	return unsafe.Add(m.a.base, m.a.half+m.off+uintptr(p))
}

// Find returns a list of the mapping's pool that has room and whose TID ok
// accepts; if none does and grow is set, it tries threads for a new list,
// and fails with ErrThreads, ErrNoRoom or ErrTaken if none suits.
func (m *Mapping) Find(ok func(tid int32) bool, grow bool) (*List, error) {
	return m.a.pool.find(ok, grow)
}

// Unlink removes the mapping's entries from l: before Unmap, every list that
// links any of them must.
func (m *Mapping) Unlink(l *List) {
	s := m.shadow()
	l.Unlink(unsafe.Pointer(&s[0]), unsafe.Add(unsafe.Pointer(&s[0]), len(s)))
}

// Unmap returns the mapping and its shadow to the arena's reservation, where
// they stay in quarantine before another mapping may have them.
func (m *Mapping) Unmap() error {
	if m.data == nil {
		return nil
	}
	m.data = nil
	return m.release()
}

// release reserves the mapping's ranges again and puts them in quarantine. A
// range that cannot be reserved again (out of memory for the kernel's map)
// is unmapped and never reused: something else may be mapped there later.
func (m *Mapping) release() error {
	err := Reserve(unsafe.Add(m.a.base, m.off), m.n)
	if serr := Reserve(unsafe.Add(m.a.base, m.a.half+m.off), m.n); err == nil {
		err = serr
	}
	arenas.mu.Lock()
	defer arenas.mu.Unlock()
	m.a.live--
	if err != nil {
		m.a.holed = true
		unix.MunmapPtr(unsafe.Add(m.a.base, m.off), m.n)
		unix.MunmapPtr(unsafe.Add(m.a.base, m.a.half+m.off), m.n)
		return err
	}
	m.a.held = append(m.a.held, span{m.off, m.n, time.Now().Add(Quarantine)})
	return nil
}

// Reserve replaces [p, p+n) by address space without memory.
func Reserve(p unsafe.Pointer, n uintptr) error {
	_, err := unix.MmapPtr(-1, 0, p, n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED)
	return err
}

// place finds n bytes in an arena: free, or out of quarantine, or else (the
// oldest first) in quarantine, or else in a new arena.
func (as *arenaSet) place(n uintptr) (*arena, uintptr, error) {
	as.mu.Lock()
	defer as.mu.Unlock()
	now := time.Now()
	as.dropEmpty(now)
	for _, early := range []bool{false, true} {
		for _, a := range as.all {
			if n > a.half {
				continue // releasing its quarantine early would not make room
			}
			if off, ok := a.take(n, now, early); ok {
				a.live++
				return a, off, nil
			}
		}
	}
	a, err := as.newArena(n)
	if err != nil {
		return nil, 0, err
	}
	as.all = append(as.all, a)
	off, _ := a.take(n, now, false)
	a.live++
	return a, off, nil
}

// dropEmpty unmaps the arenas but the first that hold no mapping and no range
// in quarantine. Their pools stay, for arenas of the same half.
func (as *arenaSet) dropEmpty(now time.Time) {
	kept := as.all[:0]
	for i, a := range as.all {
		a.release(now, false)
		if i > 0 && a.live == 0 && len(a.held) == 0 && !a.holed {
			unix.MunmapPtr(a.base, 2*a.half)
			continue
		}
		kept = append(kept, a)
	}
	clear(as.all[len(kept):])
	as.all = kept
}

// newArena reserves an arena whose halves hold at least n bytes: defaultHalf
// if the address space allows (or the least power of two times it that holds
// n), less down to n if not.
func (as *arenaSet) newArena(n uintptr) (*arena, error) {
	// Halves beyond the default are powers of two, so that regions of
	// many sizes share a few pools (each holds threads for good).
	first := uintptr(defaultHalf)
	for first < n && first <= ^uintptr(0)/4 {
		first *= 2
	}
	for half := max(first, n); ; half = max(pageRound(half/2), n) {
		if half <= ^uintptr(0)/2 {
			base, err := unix.MmapPtr(-1, 0, nil, 2*half, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err == nil {
				if as.pools == nil {
					as.pools = map[uintptr]*pool{}
				}
				p := as.pools[half]
				if p == nil {
					p = &pool{offset: int(line.LowOffset) - int(half)}
					as.pools[half] = p
				}
				return &arena{base: base, half: half, free: []span{{off: 0, n: half}}, pool: p}, nil
			}
		}
		if half == n {
			break
		}
	}
	return nil, fmt.Errorf("%w: %d bytes, twice over, could not be reserved", ErrAddressSpace, n)
}

// release frees the ranges whose quarantine is over, or, with early, the
// oldest ones until n bytes in a row are free.
func (a *arena) release(now time.Time, early bool) {
	kept := a.held[:0]
	for _, s := range a.held {
		if now.Before(s.until) && !early {
			kept = append(kept, s)
		} else {
			a.put(s.off, s.n)
		}
	}
	clear(a.held[len(kept):])
	a.held = kept
}

// take allocates n bytes of the data half, first fit, from the free ranges;
// with early, from those in quarantine too, the oldest first.
func (a *arena) take(n uintptr, now time.Time, early bool) (uintptr, bool) {
	a.release(now, false)
	for {
		if off, ok := a.fit(n); ok {
			return off, true
		}
		if !early || len(a.held) == 0 {
			return 0, false
		}
		s := a.held[0]
		a.held = a.held[1:]
		a.put(s.off, s.n)
	}
}

// fit takes n bytes from the first free range that has them.
func (a *arena) fit(n uintptr) (uintptr, bool) {
	for i, s := range a.free {
		if s.n >= n {
			if s.n == n {
				a.free = append(a.free[:i], a.free[i+1:]...)
			} else {
				a.free[i] = span{off: s.off + n, n: s.n - n}
			}
			return s.off, true
		}
	}
	return 0, false
}

// put frees [off, off+n), merging it with its neighbours.
func (a *arena) put(off, n uintptr) {
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].off > off })
	a.free = append(a.free, span{})
	copy(a.free[i+1:], a.free[i:])
	a.free[i] = span{off: off, n: n}
	if i+1 < len(a.free) && a.free[i].off+a.free[i].n == a.free[i+1].off {
		a.free[i].n += a.free[i+1].n
		a.free = append(a.free[:i+1], a.free[i+2:]...)
	}
	if i > 0 && a.free[i-1].off+a.free[i-1].n == a.free[i].off {
		a.free[i-1].n += a.free[i].n
		a.free = append(a.free[:i], a.free[i+1:]...)
	}
}

// Hold keeps the reserved range [p, p+n) from the kernel, which would give
// it to the next mapping, for Quarantine, then unmaps it; sooner, oldest
// first, while the ranges held exceed defaultHalf. Mappings outside the
// arenas (probe mode's) leave their ranges to it.
func Hold(p unsafe.Pointer, n uintptr) {
	held.mu.Lock()
	defer held.mu.Unlock()
	r := &heldRange{p: p, n: n}
	held.ranges = append(held.ranges, r)
	held.bytes += n
	for held.bytes > defaultHalf && len(held.ranges) > 1 {
		held.drop(held.ranges[0])
	}
	time.AfterFunc(Quarantine, func() {
		held.mu.Lock()
		defer held.mu.Unlock()
		held.drop(r)
	})
}

type heldRange struct {
	p unsafe.Pointer
	n uintptr
}

// heldSet is the ranges Hold keeps, oldest first.
type heldSet struct {
	mu     sync.Mutex
	ranges []*heldRange
	bytes  uintptr
}

var held heldSet

// drop unmaps r, if it is still held. The caller holds h.mu.
func (h *heldSet) drop(r *heldRange) {
	for i, x := range h.ranges {
		if x == r {
			unix.MunmapPtr(r.p, r.n)
			h.bytes -= r.n
			h.ranges = append(h.ranges[:i], h.ranges[i+1:]...)
			return
		}
	}
}
