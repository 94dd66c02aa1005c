//go:build linux

// Package robust registers, from pure Go, Linux robust futex lists on
// dedicated OS threads, so that when the process dies, of any cause (SIGKILL,
// exit, an unrecovered panic, exec), the kernel marks every lock word in the
// lists that names one of those threads as its owner, and wakes one waiter
// sleeping on each (kernel Documentation/locking/robust-futex-ABI.rst).
//
// The kernel's ABI, for one thread:
//
//	head:   {next, futex_offset, list_op_pending}: three words (the offset
//	        is a C long), registered with set_robust_list(head, len) by
//	        the thread itself
//	entry:  a pointer-sized word holding the next entry's address (the
//	        head's address ends the list); bit 0 set would mean a PI futex
//	futex:  the 32-bit word at entry + futex_offset: bits 0..29 the owner's
//	        TID (in its own PID namespace), bit 30 FUTEX_OWNER_DIED, bit 31
//	        FUTEX_WAITERS
//
// At the thread's exit the kernel walks at most Limit entries, and stops at
// the first entry or futex word it cannot read. For each futex word whose TID
// is the dying thread's it writes (word & FUTEX_WAITERS) | FUTEX_OWNER_DIED,
// and if FUTEX_WAITERS was set wakes one waiter in a shared FUTEX_WAIT on it.
// Words of other owners are left alone: that comparison, by the TID number as
// the dying thread's own PID namespace counts it, is all that keeps a list
// from marking a lock its thread does not hold. So a list may hold entries of
// locks that are free or held by others, as long as no other thread that may
// hold them has the same number: the caller keeps the TIDs of all threads
// that can hold its locks distinct (threads in two PID namespaces can share a
// number).
//
// Entries need not lie beside their futex words: one futex_offset serves a
// whole list, so the entries live in private memory laid out like the shared
// mappings they cover (see Map): no shared byte holds a pointer of this
// process, and one list serves the locks of every region the process maps.
//
// The threads only park: they never take a lock. Lock words name them while
// goroutines on any thread hold them, so the walks at their exits cover every
// lock the process holds, and since every thread of a process dies with it
// (exit_group, exec, a fatal signal), those walks come with the death of the
// process. A thread, once it carries a list, never ends and never runs
// anything else: it may have run the host's goroutines before, and the end of
// a thread is an event (a child's parent-death signal follows the thread that
// forked it; see prctl(2), PR_SET_PDEATHSIG). See pool.go.
package robust

import (
	"errors"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/futex"
	"github.com/shmlock/shmlock/internal/line"
)

// Limit is how many entries of one list the kernel walks at a thread's exit
// (ROBUST_LIST_LIMIT); entries beyond it are never marked.
const Limit = 2048

var (
	// ErrUnsupported: the kernel refused set_robust_list.
	ErrUnsupported = errors.New("robust futex lists are not available (set_robust_list refused)")
	// ErrFull: the list holds Limit entries already.
	ErrFull = errors.New("robust list is full")
)

// head is struct robust_list_head: the futex offset is a C long, the size of
// a Go int on every Linux port.
type head struct {
	next    uintptr
	offset  int
	pending uintptr
}

// List is a robust list registered on a dedicated thread (see pool.go).
type List struct {
	mu   sync.Mutex // serialises changes of the list
	head *head      // in a page of its own, outside the Go heap
	tid  int32
	// order holds the linked entries, the newest last: the kernel walks
	// them from the end of the slice to its start.
	order []unsafe.Pointer
}

// TID returns the owner value (bits 0..29) that a lock word must hold for the
// kernel to mark it when this list's process dies.
func (l *List) TID() int32 { return l.tid }

// Len returns the number of entries linked.
func (l *List) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order)
}

// room reports whether the list can take another entry.
func (l *List) room() bool { return l.Len() < Limit }

// Link adds the entry at e to the front of the list, or fails with ErrFull.
// e must lie in the shadow of a Mapping of the list's arena (Mapping.Entry),
// and must not be linked already; it stays linked until Unlink. list_op_pending
// covers the stores: the entry's next pointer is written before the head
// publishes it, so a walk at any moment finds a well-formed list, and a death
// in between still has the kernel look at e.
func (l *List) Link(e unsafe.Pointer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.order) >= Limit {
		return ErrFull
	}
	store(&l.head.pending, uintptr(e))
	store((*uintptr)(e), l.head.next)
	store(&l.head.next, uintptr(e))
	store(&l.head.pending, 0)
	l.order = append(l.order, e)
	return nil
}

// Unlink removes every entry in [lo, hi) from the list, so that the memory
// they lie in may be unmapped. Each removal is one store of its predecessor's
// next pointer, so a walk at any moment finds a well-formed list holding the
// entries not yet removed.
func (l *List) Unlink(lo, hi unsafe.Pointer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := &l.head.next
	kept := make([]unsafe.Pointer, 0, len(l.order))
	for i := len(l.order) - 1; i >= 0; i-- {
		e := l.order[i]
		if uintptr(e) >= uintptr(lo) && uintptr(e) < uintptr(hi) {
			store(prev, atomic.LoadUintptr((*uintptr)(e)))
			continue
		}
		kept = append(kept, e)
		prev = (*uintptr)(e)
	}
	for i, j := 0, len(kept)-1; i < j; i, j = i+1, j-1 {
		kept[i], kept[j] = kept[j], kept[i]
	}
	l.order = kept
}

// store writes a word the kernel may read at the thread's death: an atomic
// store, so that neither the compiler nor the CPU reorders the list's steps.
func store(p *uintptr, v uintptr) { atomic.StoreUintptr(p, v) }

// MarkDead does to the futex word at w what the kernel does at the death of
// thread tid: if w names tid as its owner, it becomes (w & Waiters) |
// OwnerDied, and one waiter is woken if Waiters was set. A process that
// gives up its locks without dying (it unmaps their region) calls it for
// each lock, so that they are recovered as promptly as at a death. It
// reports whether it marked w.
func MarkDead(w *uint32, tid int32) bool {
	for {
		u := atomic.LoadUint32(w)
		if u&line.OwnerMask != uint32(tid) {
			return false
		}
		if atomic.CompareAndSwapUint32(w, u, u&line.Waiters|line.OwnerDied) {
			if u&line.Waiters != 0 {
				futex.Wake(w, 1)
			}
			return true
		}
	}
}

var (
	availableOnce sync.Once
	available     bool
)

// Available reports whether this kernel keeps robust futex lists: whether
// get_robust_list answers for the calling thread (it fails with ENOSYS on a
// kernel without futexes, and under a seccomp filter that forbids it).
func Available() bool {
	availableOnce.Do(func() {
		var h, n uintptr
		_, _, errno := unix.RawSyscall(unix.SYS_GET_ROBUST_LIST, 0, uintptr(unsafe.Pointer(&h)), uintptr(unsafe.Pointer(&n)))
		available = errno == 0
	})
	return available
}
