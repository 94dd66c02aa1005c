//go:build linux

// Package robust registers, from pure Go, a Linux robust futex list on a
// dedicated OS thread, so that when the thread's process dies, of any cause
// (SIGKILL, exit, an unrecovered panic, exec), the kernel marks every lock
// word in the list that names the thread as its owner, and wakes one waiter
// sleeping on each (kernel Documentation/locking/robust-futex-ABI.rst).
//
// The kernel's ABI, for one thread:
//
//	head:   {next, futex_offset, list_op_pending}, registered with
//	        set_robust_list(head, 24) by the thread itself
//	entry:  a pointer-sized word holding the next entry's address (the
//	        head's address ends the list); bit 0 set would mean a PI futex
//	futex:  the 32-bit word at entry + futex_offset: bits 0..29 the owner's
//	        TID (in its own PID namespace), bit 30 FUTEX_OWNER_DIED, bit 31
//	        FUTEX_WAITERS
//
// At the thread's exit the kernel walks at most Limit entries, and stops at
// the first it cannot read. For each futex word whose TID is the dying
// thread's it writes (word & FUTEX_WAITERS) | FUTEX_OWNER_DIED, and if
// FUTEX_WAITERS was set wakes one waiter in a shared FUTEX_WAIT on it. Words
// of other owners are left alone: that comparison, by the TID number as the
// dying thread's own PID namespace counts it, is all that keeps a list from
// marking a lock its thread does not hold. So a list may hold entries of
// locks that are free or held by others, as long as no other thread that
// may hold them has the same number: the caller keeps the TIDs of all
// threads that can hold its locks distinct (threads in two PID namespaces
// can share a number).
//
// Entries need not lie beside their futex words: one futex_offset serves a
// whole list, so a list may keep its entries in private memory laid out like
// the shared region (entry at shadow + o, futex at region + o, futex_offset =
// region - shadow). Then no shared byte holds a pointer of this process.
//
// The dedicated thread only parks: it never takes a lock. Lock words name it
// while goroutines on any thread hold them, so the walk at its exit covers
// every lock the process holds, and since every thread of a process dies
// with it (exit_group, exec, a fatal signal), that walk comes with the
// death of the process.
package robust

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/futex"
)

// Owner-word bits the kernel reads and writes.
const (
	TIDMask   = 1<<30 - 1
	OwnerDied = 1 << 30
	Waiters   = 1 << 31
)

// Limit is how many entries of one list the kernel walks at a thread's exit
// (ROBUST_LIST_LIMIT); entries beyond it are never marked.
const Limit = 2048

// head is struct robust_list_head.
type head struct {
	next    uintptr
	offset  int64
	pending uintptr
}

// List is a robust list registered on a dedicated thread that lives as long
// as the process, or until Close.
type List struct {
	mu   sync.Mutex // serialises changes of the list
	n    int        // entries linked
	head *head      // in a page of its own, outside the Go heap
	page []byte
	tid  int32

	started chan struct{} // the list's thread is chosen
	quit    chan struct{}
	done    chan struct{}
}

var (
	// ErrUnsupported: the kernel refused set_robust_list.
	ErrUnsupported = errors.New("robust: set_robust_list is not available")
	// ErrFull: the list holds Limit entries already.
	ErrFull = errors.New("robust: list is full")
)

// New starts the thread and registers an empty list whose entries are at
// futex word - offset.
func New(offset int64) (*List, error) {
	page, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	l := &List{head: (*head)(unsafe.Pointer(&page[0])), page: page, started: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{})}
	l.head.next = uintptr(unsafe.Pointer(l.head)) // empty: the head points at itself
	l.head.offset = offset
	ready := make(chan error)
	go l.run(ready)
	if err := <-ready; err != nil {
		unix.Munmap(page)
		return nil, err
	}
	return l, nil
}

// run is the list's thread: it registers the list and parks until Close.
func (l *List) run(ready chan<- error) {
	// The thread stays locked to this goroutine, which never returns
	// before Close: it is the list's owner, and its TID the owner value of
	// every lock word the list covers. Returning while locked ends the
	// thread.
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The main thread: the process's own robust list (glibc's, in a
		// program with cgo) belongs there, and Go cannot end it at
		// Close. Keep it busy while another goroutine starts, which
		// therefore runs on another thread, then let it go.
		go l.run(ready)
		<-l.started
		runtime.UnlockOSThread()
		return
	}
	close(l.started)
	_, _, errno := unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, uintptr(unsafe.Pointer(l.head)), unsafe.Sizeof(head{}), 0)
	if errno != 0 {
		ready <- errors.Join(ErrUnsupported, errno)
		return
	}
	l.tid = int32(unix.Gettid())
	ready <- nil
	<-l.quit
	// Unregister before the thread ends, so that its exit walks
	// nothing that may be unmapped by then.
	unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, 0, unsafe.Sizeof(head{}), 0)
	close(l.done)
}

// TID returns the owner value (bits 0..29) that a lock word must hold for the
// kernel to mark it when this list's process dies.
func (l *List) TID() int32 { return l.tid }

// Len returns the number of entries linked.
func (l *List) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// Link adds the entry at e (e + offset is a lock's futex word) to the front
// of the list, or fails with ErrFull. e must stay mapped and readable until
// Clear or Close, outside the Go heap, and 8-aligned, and must not be linked
// already. list_op_pending covers the stores: the entry's next pointer is
// written before the head publishes it, so a walk at any moment finds a
// well-formed list, and a death in between still has the kernel look at e.
func (l *List) Link(e unsafe.Pointer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= Limit {
		return ErrFull
	}
	store(&l.head.pending, uintptr(e))
	store((*uintptr)(e), l.head.next)
	store(&l.head.next, uintptr(e))
	store(&l.head.pending, 0)
	l.n++
	return nil
}

// Clear empties the list, so that the memory its entries lie in may be
// unmapped.
func (l *List) Clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	store(&l.head.next, uintptr(unsafe.Pointer(l.head)))
	l.n = 0
}

// Close empties the list, unregisters it and ends its thread.
func (l *List) Close() {
	l.Clear()
	close(l.quit)
	<-l.done
	unix.Munmap(l.page)
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
		if u&TIDMask != uint32(tid) {
			return false
		}
		if atomic.CompareAndSwapUint32(w, u, u&Waiters|OwnerDied) {
			if u&Waiters != 0 {
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
