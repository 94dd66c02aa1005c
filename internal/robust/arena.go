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
// base + half + o + p, and its futex word at base + o + p + line.LowHalf, so
// the futex offset of every list of the arena is line.LowHalf - half.
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
// an address in it, and it must fault there, not reach another region's
// lock.
//
// Regions in probe mode are mapped in an arena too, for the quarantine; they
// have no shadow.
//
// A process starts with no arena; the first robust mapping reserves one of
// defaultHalf a half (less where the address space is smaller, or limited),
// and a mapping that fits no arena reserves another, with lists of its own.
var defaultHalf = func() uintptr {
	shift := uint(36) // 64 GiB
	if unsafe.Sizeof(uintptr(0)) < 8 {
		shift = 28 // 256 MiB of a 32-bit address space
	}
	return 1 << shift
}()

// ErrAddressSpace: no arena could be reserved for a mapping of this size.
var ErrAddressSpace = errors.New("no address space for a robust mapping")

type arena struct {
	base unsafe.Pointer
	half uintptr
	free []span // free ranges of the data half, sorted by offset, coalesced
	held []span // ranges left, in quarantine until their time
	pool pool
}

type span struct {
	off, n uintptr
	until  time.Time // held: when it may be given again
}

// quarantine is how long a range a mapping left is kept from others.
const quarantine = 10 * time.Second

var arenas struct {
	mu  sync.Mutex
	all []*arena
}

// Mapping is a region file mapped into an arena, with its shadow.
type Mapping struct {
	a      *arena
	off    uintptr // in the data half
	n      uintptr // length, in whole pages
	data   []byte
	shadow bool
}

func pageRound(n uintptr) uintptr {
	ps := uintptr(unix.Getpagesize())
	return (n + ps - 1) / ps * ps
}

// Map maps the first size bytes of the file fd, shared and writable, into an
// arena, and if shadow is set makes its shadow ready for list entries.
func Map(fd int, size int, shadow bool) (*Mapping, error) {
	if size <= 0 {
		return nil, fmt.Errorf("robust: mapping of %d bytes", size)
	}
	n := pageRound(uintptr(size))
	a, off, err := place(n)
	if err != nil {
		return nil, err
	}
	m := &Mapping{a: a, off: off, n: n, shadow: shadow}
	addr := unsafe.Add(a.base, off)
	if _, err := unix.MmapPtr(fd, 0, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		m.release()
		return nil, err
	}
	if shadow {
		if err := unix.Mprotect(m.shadowRange(), unix.PROT_READ|unix.PROT_WRITE); err != nil {
			m.release()
			return nil, err
		}
	}
	m.data = unsafe.Slice((*byte)(addr), size)
	return m, nil
}

// Bytes returns the mapping.
func (m *Mapping) Bytes() []byte { return m.data }

// shadowRange returns the mapping's shadow range.
func (m *Mapping) shadowRange() []byte {
	return unsafe.Slice((*byte)(unsafe.Add(m.a.base, m.a.half+m.off)), m.n)
}

// Entry returns the list entry for the 64-bit owner word at byte p of the
// mapping (8-aligned): the kernel finds the word's low half from it.
func (m *Mapping) Entry(p int) unsafe.Pointer {
	return unsafe.Add(m.a.base, m.a.half+m.off+uintptr(p))
}

// Find returns a list of the mapping's arena that has room and whose TID ok
// accepts; if none does and grow is set, it tries threads for a new list,
// and fails with ErrThreads or ErrTaken if none suits.
func (m *Mapping) Find(ok func(tid int32) bool, grow bool) (*List, error) {
	return m.a.pool.find(ok, grow)
}

// Unlink removes the mapping's entries from l: before Unmap, every list that
// links any of them must.
func (m *Mapping) Unlink(l *List) {
	s := m.shadowRange()
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
	err := reserve(unsafe.Add(m.a.base, m.off), m.n)
	if serr := reserve(unsafe.Add(m.a.base, m.a.half+m.off), m.n); err == nil {
		err = serr
	}
	if err != nil {
		unix.MunmapPtr(unsafe.Add(m.a.base, m.off), m.n)
		unix.MunmapPtr(unsafe.Add(m.a.base, m.a.half+m.off), m.n)
		return err
	}
	arenas.mu.Lock()
	m.a.held = append(m.a.held, span{m.off, m.n, time.Now().Add(quarantine)})
	arenas.mu.Unlock()
	return nil
}

// reserve replaces [p, p+n) by address space without memory.
func reserve(p unsafe.Pointer, n uintptr) error {
	_, err := unix.MmapPtr(-1, 0, p, n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED)
	return err
}

// place finds n bytes in an arena, reserving a new arena if none has them.
func place(n uintptr) (*arena, uintptr, error) {
	arenas.mu.Lock()
	defer arenas.mu.Unlock()
	for _, a := range arenas.all {
		if off, ok := a.take(n); ok {
			return a, off, nil
		}
	}
	a, err := newArena(n)
	if err != nil {
		return nil, 0, err
	}
	arenas.all = append(arenas.all, a)
	off, _ := a.take(n)
	return a, off, nil
}

// newArena reserves an arena whose halves hold at least n bytes: defaultHalf
// if the address space allows, less down to n if not.
func newArena(n uintptr) (*arena, error) {
	for half := max(defaultHalf, n); ; half = max(pageRound(half/2), n) {
		if half <= ^uintptr(0)/2 {
			base, err := unix.MmapPtr(-1, 0, nil, 2*half, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err == nil {
				a := &arena{base: base, half: half, free: []span{{off: 0, n: half}}}
				a.pool.offset = int(line.LowHalf) - int(half)
				return a, nil
			}
		}
		if half == n {
			break
		}
	}
	return nil, fmt.Errorf("%w: %d bytes, twice over, could not be reserved", ErrAddressSpace, n)
}

// take allocates n bytes of the data half, first fit, from the ranges free
// and those whose quarantine is over.
func (a *arena) take(n uintptr) (uintptr, bool) {
	now := time.Now()
	kept := a.held[:0]
	for _, s := range a.held {
		if now.Before(s.until) {
			kept = append(kept, s)
		} else {
			a.put(s.off, s.n)
		}
	}
	a.held = kept
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
