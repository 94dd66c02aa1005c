//go:build race

package shmlock

import (
	"runtime"
	"sync"
	"unsafe"

	"github.com/shmlock/shmlock/shm"
)

// The race detector ignores atomic operations on memory outside the Go heap,
// such as the mapped region, so it would see no order between one hold and
// the next, and report Mutex.held as raced. The owner word's CAS does order
// them; tell the detector so, on one heap byte per lock line, shared by
// every Mutex value for that line in this process (a lock taken through one
// may be released through another).
type raceLine struct {
	r   *shm.Region
	off int
}

var raceLines sync.Map // raceLine → *byte

func raceAddr(m *Mutex) unsafe.Pointer {
	k := raceLine{m.r, m.off}
	v, ok := raceLines.Load(k)
	if !ok {
		v, _ = raceLines.LoadOrStore(k, new(byte))
	}
	return unsafe.Pointer(v.(*byte))
}

func raceAcquire(m *Mutex) { runtime.RaceAcquire(raceAddr(m)) }

// raceRelease must follow Unlock's read of held, which it orders before the
// next acquisition's write.
func raceRelease(m *Mutex) { runtime.RaceReleaseMerge(raceAddr(m)) }
