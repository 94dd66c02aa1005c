//go:build !linux

package futex

import (
	"sync/atomic"
	"time"
)

func wait(addr *uint32, val uint32, timeout time.Duration) {
	if atomic.LoadUint32(addr) != val {
		return
	}
	time.Sleep(min(timeout, MaxSleep))
}

func wake(addr *uint32, n int) int { return 0 }

func waitMask(addr *uint32, val uint32, timeout time.Duration, mask uint32) {
	wait(addr, val, timeout)
}

func wakeMask(addr *uint32, n int, mask uint32) int { return 0 }
