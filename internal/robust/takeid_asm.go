//go:build linux && (amd64 || arm64 || 386)

package robust

import (
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// canTakeID says whether takeID is implemented here.
const canTakeID = true

// rawTakeID starts a thread that ends at once and returns its ID, or -errno.
//
//go:noescape
func rawTakeID(all, old *uint64, stack uintptr) int32

var (
	takeMu sync.Mutex // one at a time: they share idStack
	// idStack is the stack rawTakeID's threads start on; they never
	// touch it.
	idStack [32]uint64
)

// takeID makes the kernel hand out the next ID of this PID namespace to a
// thread that ends at once, and returns that ID: the next thread or process
// to start gets a later one. It is a thread of this process, like the
// runtime's, so it needs no permission a Go program lacks, sends no SIGCHLD
// and runs no program; takeID returns once it is gone (tgkill finds no such
// thread), so that it does not hold a place under the process's limits (its
// pids cgroup, RLIMIT_NPROC) while the next one starts.
//
// Unlike the runtime's, these threads are not serialised with exec (Go issue
// 19546): a syscall.Exec of a set-user-ID program concurrent with a search
// may run it without its privilege.
func takeID() (int32, bool) {
	takeMu.Lock()
	defer takeMu.Unlock()
	all, old := ^uint64(0), uint64(0)
	stack := uintptr(unsafe.Pointer(&idStack[len(idStack)-2])) &^ 15
	id := rawTakeID(&all, &old, stack)
	if id <= 0 {
		return 0, false
	}
	pid := unix.Getpid()
	for i := 0; i < 10_000 && unix.Tgkill(pid, int(id), 0) == nil; i++ {
		if i < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(10 * time.Microsecond)
		}
	}
	return id, true
}
