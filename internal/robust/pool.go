//go:build linux

package robust

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// threads; instead the search first skips the taken IDs, giving each to a
// thread that ends at once (takeID: one that never ran anything, so ending
// it harms nobody), so that its next new thread gets a free one. A search
// holds the runtime's idle threads and a new thread or two, never ends one
// of the runtime's, and keeps one.
//
// Threads are few: lists are shared by every mapping of an arena, so a
// process needs one per Limit lock lines it makes, plus one for each region
// in which the IDs of its others are taken. MaxThreads bounds them.
const (
	// MaxThreads is the most threads that carry lists in one process.
	MaxThreads = 128
	// maxTries is the most new threads one search tries where taken IDs
	// cannot be skipped; maxNew where they can.
	maxTries = 64
	maxNew   = 4
	// maxSkip is the most IDs one search skips.
	maxSkip = 4096
	// minRoom, and one more for each P, is how many more threads the
	// process must be allowed to start for a search to begin: each
	// goroutine it starts may have the runtime start a thread for an idle
	// P, and holding the idle threads makes it start more (3 to 5 seen with
	// 100 idle threads, up to GOMAXPROCS+7 with none).
	minRoom = 6
)

var (
	// ErrThreads: the process has MaxThreads lists, and needs another.
	ErrThreads = errors.New("the process's robust lists are all in use")
	// ErrTaken: every thread tried has an ID the caller refused.
	ErrTaken = errors.New("every thread tried has a taken ID")
	// ErrNoRoom: the process may start too few more threads for a search
	// (debug.SetMaxThreads, RLIMIT_NPROC or its pids cgroup would stop it).
	ErrNoRoom = errors.New("too few more threads may start")
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
	// Threads that exist are tried first (the runtime's idle ones); once
	// they are held the runtime starts new ones, the next of which gets the
	// namespace's next ID, so taken ones are skipped before. Holding the
	// existing ones makes the runtime start a few threads more (to run the
	// goroutines meanwhile): where none of them has a free ID and none can
	// be skipped to, nothing is held.
	known, skips := threadIDs(), maxSkip
	room, need := threadRoom(len(known)), runtime.GOMAXPROCS(0)+minRoom
	if room < need {
		return nil, ErrNoRoom
	}
	newTries := min(maxTries, room-need)
	if canTakeID {
		newTries = maxNew
		free, started := skipTaken(ok, &skips)
		if !started {
			return nil, ErrNoRoom // a thread could not start
		}
		if !free {
			newTries = 0 // no new thread would have a free ID
			if !anyFree(known, ok) {
				return nil, ErrTaken
			}
		}
	}
	for len(tried) < len(known)+newTries {
		if n := registered.Add(1); n > MaxThreads {
			registered.Add(-1)
			return nil, ErrThreads
		}
		t := lockThread()
		if t.usable && ok(t.tid) {
			l, err := t.register(p.offset)
			if err != nil {
				registered.Add(-1)
				return nil, err
			}
			p.lists = append(p.lists, l)
			return l, nil
		}
		registered.Add(-1)
		tried = append(tried, t)
		if !known[t.tid] && canTakeID {
			free, started := skipTaken(ok, &skips)
			if !started {
				return nil, ErrNoRoom
			}
			if !free {
				break
			}
		}
	}
	return nil, ErrTaken
}

// anyFree reports whether a thread of ids that may carry a list (not the main
// thread, not one that carries one already) has an ID that ok accepts.
func anyFree(ids map[int32]bool, ok func(int32) bool) bool {
	pid := int32(unix.Getpid())
	for id := range ids {
		if id != pid && !listTIDs.has(id) && ok(id) {
			return true
		}
	}
	return false
}

// listTIDs are the IDs of the threads that carry lists, in every pool.
var listTIDs tidSet

type tidSet struct {
	mu  sync.Mutex
	ids map[int32]bool
}

func (s *tidSet) add(id int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[int32]bool{}
	}
	s.ids[id] = true
}

func (s *tidSet) has(id int32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}

// skipTaken makes the next IDs the kernel hands out in this PID namespace
// ones that ok accepts, by giving the IDs it refuses to threads that end at
// once (takeID): enough of them in a row (one for each P, and a few) that the
// threads the runtime starts meanwhile, for idle Ps, leave one for the
// search's next. It takes at most *budget IDs, and counts them off; it
// reports whether it could, and false for started if a thread failed to
// start (the process is at a limit on tasks).
func skipTaken(ok func(int32) bool, budget *int) (free, started bool) {
	run := int32(runtime.GOMAXPROCS(0) + maxNew)
	for ; *budget > 0; *budget-- {
		id, started := takeID()
		if !started {
			return false, false
		}
		free := true
		for i := int32(1); i <= run && free; i++ {
			free = ok(id + i)
		}
		if free {
			return true, true
		}
	}
	return false, true
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
	listTIDs.add(t.tid)
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

// threadRoom is how many more threads this process, which has n, may start
// before a limit stops it: the Go runtime's (debug.SetMaxThreads, which
// kills a process past it), the user's RLIMIT_NPROC, or that of its pids
// cgroup, or of any cgroup above (v1 or v2).
func threadRoom(n int) int {
	room := maxThreads() - n
	if r, ok := nprocRoom(); ok {
		room = min(room, r)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return room
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var roots []string
		switch {
		case f[0] == "0" && f[1] == "":
			roots = []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}
		case strings.Contains(","+f[1]+",", ",pids,"):
			roots = []string{"/sys/fs/cgroup/pids"}
		default:
			continue
		}
		for _, root := range roots {
			for dir := f[2]; ; dir = filepath.Dir(dir) {
				if r, ok := pidsRoom(filepath.Join(root, dir)); ok {
					room = min(room, r)
				}
				if dir == "/" || dir == "." {
					break
				}
			}
		}
	}
	return room
}

// maxThreads is the Go runtime's limit on threads (debug.SetMaxThreads), read
// at every search. It can only be read by setting it and setting it back: a
// host that sets it in the same instant may see MaxInt32 returned, or have its
// value undone. Reading it once instead would miss a limit the host lowers
// later, and the search would then exceed it, a fatal error.
func maxThreads() int {
	n := debug.SetMaxThreads(math.MaxInt32)
	debug.SetMaxThreads(n)
	return n
}

// nprocRoom is how many more tasks RLIMIT_NPROC lets this process's user
// start: the limit less the threads of every process of the user (by real
// user ID) that /proc shows. Root of the initial user namespace is not held
// to it; root of any other is. Tasks of the user that this /proc does not
// show (in other PID namespaces) are not counted.
func nprocRoom() (int, bool) {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NPROC, &lim) != nil || lim.Cur == unix.RLIM_INFINITY || (unix.Getuid() == 0 && initialUserNS()) {
		return 0, false
	}
	uid := strconv.Itoa(unix.Getuid())
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	used := 0
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/status")
		if err != nil {
			continue
		}
		var mine bool
		var threads int
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				f := strings.Fields(v)
				mine = len(f) > 0 && f[0] == uid
			} else if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				threads, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if mine {
			used += threads
		}
	}
	return int(min(lim.Cur, math.MaxInt32)) - used, true
}

// initialUserNS reports whether this process is in the initial user
// namespace, whose uid_map maps every ID to itself.
func initialUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && strings.Join(strings.Fields(string(b)), " ") == "0 0 4294967295"
}

// pidsRoom reads how many more tasks the pids cgroup at dir admits.
func pidsRoom(dir string) (int, bool) {
	max, err := os.ReadFile(filepath.Join(dir, "pids.max"))
	if err != nil || strings.TrimSpace(string(max)) == "max" {
		return 0, false
	}
	cur, err := os.ReadFile(filepath.Join(dir, "pids.current"))
	if err != nil {
		return 0, false
	}
	m, err1 := strconv.Atoi(strings.TrimSpace(string(max)))
	c, err2 := strconv.Atoi(strings.TrimSpace(string(cur)))
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return m - c, true
}
