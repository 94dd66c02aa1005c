//go:build shmlock_fault

package fault

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Enabled reports whether this build can inject faults.
const Enabled = true

var (
	target = Point(255) // the point to die at
	nth    int64        // on this pass (1-based)
	passes [numPoints]atomic.Int64

	hookMu sync.Mutex
	hooks  [numPoints]func()
)

func init() {
	v := os.Getenv("SHMLOCK_FAULT")
	if v == "" {
		return
	}
	name, n, _ := strings.Cut(v, ":")
	p, ok := Parse(name)
	if !ok {
		panic("fault: unknown point " + name)
	}
	target, nth = p, 1
	if n != "" {
		nth, _ = strconv.ParseInt(n, 10, 64)
	}
}

// Hit marks a step of a protocol: it runs the hook set for p, and kills the
// process if this is the pass it was told to die at.
func Hit(p Point) {
	hookMu.Lock()
	h := hooks[p]
	hookMu.Unlock()
	if h != nil {
		h()
	}
	if p == target && passes[p].Add(1) == nth {
		fmt.Fprintf(os.Stderr, "fault: dying at %s (pass %d)\n", p, nth)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// SetHook runs f whenever p is hit (nil removes it), and returns the previous
// hook.
func SetHook(p Point, f func()) func() {
	hookMu.Lock()
	defer hookMu.Unlock()
	old := hooks[p]
	hooks[p] = f
	return old
}
