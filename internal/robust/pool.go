//go:build linux

package robust

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The threads of a process's lists. A list lives on a thread that a goroutine
// of this package has locked (runtime.LockOSThread) and that then parks for
// the rest of the process's life: the goroutine never returns, so the runtime
// never ends the thread. Ending it would be an event in the host program (a
// child started with Pdeathsig on that thread would be killed, and any other
// state the host tied to it lost), and the thread may have run any of the
// host's goroutines before this package locked it.
//
// A thread is tried before it carries a list: its TID must suit the caller
// (no other attachment of the region records it), it must not be the main
// thread, and it must not carry a robust list of its own with entries (glibc
// registers one on every thread it creates, for its robust mutexes, and
// set_robust_list would replace it). A thread that does not suit is handed
// back to the runtime (runtime.UnlockOSThread) untouched, once the search is
// over: holding the rejected ones meanwhile is what makes each try land on
// another thread, the runtime's idle ones first, then new ones.
//
// A new thread gets the next ID of the PID namespace: the kernel hands them
// out in turn (idr_alloc_cyclic). Where the region's table records the next
// ones too (containers number alike: the kth container on a region finds
// k-1 of them taken), trying one thread after another would need as many
// threads; instead the search skips the taken IDs, by starting processes that
// fail to exec at once (each takes an ID and is reaped), so that its next new
// thread gets a free one. A search holds the runtime's idle threads and a
// thread or two more, never ends one, and keeps one.
//
// Threads are few: lists are shared by every mapping of an arena, so a
// process needs one per Limit lock lines it makes, plus one for each region
// in which the IDs of its others are taken. MaxThreads bounds them.
const (
	// MaxThreads is the most threads that carry lists in one process.
	MaxThreads = 128
	// maxTries is the most threads one search tries (and holds at once).
	maxTries = 64
	// maxSkip is the most IDs one search skips (a few milliseconds each
	// hundred).
	maxSkip = 4096
)

var (
	// ErrThreads: the process has MaxThreads lists, and needs another.
	ErrThreads = errors.New("the process's robust lists are all in use")
	// ErrTaken: every thread tried has an ID the caller refused.
	ErrTaken = errors.New("every thread tried has a taken ID")
	// ErrNoList: no list of the pool suits (Find without grow).
	ErrNoList = errors.New("no robust list suits")
)

// registered counts the threads that carry lists, in all arenas.
var registered atomic.Int32

// Threads returns how many threads of this process carry robust lists.
func Threads() int { return int(registered.Load()) }

// park is what the lists' goroutines wait on, for ever: a channel that
// nobody closes, reachable, so that no tool takes them for leaked.
var park = make(chan struct{})

// pool is the lists of one arena: they share its futex offset.
type pool struct {
	mu     sync.Mutex
	offset int
	lists  []*List
}

// find returns a list of the pool that has room and whose TID ok accepts; if
// none does and grow is set, it tries threads for a new one (see above).
func (p *pool) find(ok func(tid int32) bool, grow bool) (*List, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lists {
		if l.room() && ok(l.tid) {
			return l, nil
		}
	}
	if !grow {
		return nil, ErrNoList
	}
	var tried []*thread
	defer func() {
		for _, t := range tried {
			t.handBack()
		}
	}()
	known, skips := threadIDs(), maxSkip
	for range maxTries {
		if n := registered.Add(1); n > MaxThreads {
			registered.Add(-1)
			return nil, ErrThreads
		}
		t := lockThread()
		if !t.usable || !ok(t.tid) {
			registered.Add(-1)
			tried = append(tried, t)
			// A new thread: so is the next one, with the next ID,
			// unless the taken ones are skipped.
			if !known[t.tid] && !skipIDs(t.tid, ok, &skips) {
				return nil, ErrTaken
			}
			continue
		}
		l, err := t.register(p.offset)
		if err != nil {
			registered.Add(-1)
			return nil, err
		}
		p.lists = append(p.lists, l)
		return l, nil
	}
	return nil, ErrTaken
}

// thread is a goroutine locked to its OS thread, waiting to be told whether
// to carry a list or to hand the thread back.
type thread struct {
	tid    int32
	usable bool // not the main thread, and no robust list of its own in use
	next   chan *head
	done   chan error
}

// lockThread locks a new goroutine to its thread and returns it, undecided.
func lockThread() *thread {
	t := &thread{next: make(chan *head), done: make(chan error)}
	ready := make(chan struct{})
	go t.run(ready)
	<-ready
	return t
}

func (t *thread) run(ready chan<- struct{}) {
	runtime.LockOSThread()
	t.tid = int32(unix.Gettid())
	t.usable = t.tid != int32(unix.Getpid()) && ownListEmpty()
	close(ready)
	h := <-t.next
	if h == nil {
		runtime.UnlockOSThread() // untouched: back to the runtime
		return
	}
	_, _, errno := unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, uintptr(unsafe.Pointer(h)), unsafe.Sizeof(*h), 0)
	if errno != 0 {
		runtime.UnlockOSThread() // refused: nothing changed
		t.done <- errors.Join(ErrUnsupported, errno)
		return
	}
	t.done <- nil
	<-park
}

// handBack returns the thread to the runtime untouched.
func (t *thread) handBack() { t.next <- nil }

// register makes the thread carry a new, empty list with the given futex
// offset, for the rest of the process's life.
func (t *thread) register(offset int) (*List, error) {
	page, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.handBack()
		return nil, err
	}
	h := (*head)(unsafe.Pointer(&page[0]))
	h.next = uintptr(unsafe.Pointer(h)) // empty: the head points at itself
	h.offset = offset
	t.next <- h
	if err := <-t.done; err != nil {
		unix.Munmap(page)
		return nil, err
	}
	return &List{head: h, tid: t.tid}, nil
}

// ownListEmpty reports whether the calling thread carries no robust list with
// entries: none registered, or an empty one (glibc's, on a thread with no
// robust mutex held).
func ownListEmpty() bool {
	var h unsafe.Pointer
	var n uintptr
	_, _, errno := unix.RawSyscall(unix.SYS_GET_ROBUST_LIST, 0, uintptr(unsafe.Pointer(&h)), uintptr(unsafe.Pointer(&n)))
	if errno != 0 {
		return false
	}
	return h == nil || atomic.LoadUintptr((*uintptr)(h)) == uintptr(h)
}

// threadIDs returns the IDs of this process's threads, or none if /proc
// cannot tell.
func threadIDs() map[int32]bool {
	ids := map[int32]bool{}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return ids
	}
	for _, d := range tasks {
		if n, err := strconv.ParseInt(d.Name(), 10, 32); err == nil {
			ids[int32(n)] = true
		}
	}
	return ids
}

// skipIDs makes the next ID the kernel hands out in this PID namespace, after
// the ID of the thread just started, one that ok accepts: it starts
// processes that fail to exec at once, each of which takes an ID, until
// /proc/sys/kernel/ns_last_pid (the namespace's last ID) is just below one
// that ok accepts. Where that file cannot be read, it takes as many IDs as
// ok refuses after after. It takes at most *budget IDs, and counts them off;
// it reports whether the next ID is one ok accepts (as far as it can tell).
func skipIDs(after int32, ok func(int32) bool, budget *int) bool {
	if _, err := lastID(); err != nil {
		id := after + 1
		for ; !ok(id) && *budget > 0 && takeID(); id++ {
			*budget--
		}
		return ok(id)
	}
	for {
		last, err := lastID()
		switch {
		case err != nil:
			return false
		case ok(last + 1):
			return true
		case *budget == 0 || !takeID():
			return false
		}
		*budget--
	}
}

// lastID reads the last ID the kernel handed out in this PID namespace.
func lastID() (int32, error) {
	b, err := os.ReadFile("/proc/sys/kernel/ns_last_pid")
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 32)
	return int32(n), err
}

// takeID starts a process that fails to exec at once, so that it takes the
// namespace's next ID, and reaps it (syscall.ForkExec waits for a child whose
// exec failed). It reports whether the process was started.
func takeID() bool {
	_, err := syscall.ForkExec("/", []string{"/"}, &syscall.ProcAttr{})
	return err == syscall.EACCES || err == syscall.EISDIR || err == syscall.ENOENT
}
