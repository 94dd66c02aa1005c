package futex

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The operations deliberately lack FUTEX_PRIVATE_FLAG: private futexes are
// keyed by (mm, address) and would never match a waiter in another process.
const (
	opWait       = 0  // FUTEX_WAIT
	opWake       = 1  // FUTEX_WAKE
	opWaitBitset = 9  // FUTEX_WAIT_BITSET: its timeout is absolute, CLOCK_MONOTONIC
	opWakeBitset = 10 // FUTEX_WAKE_BITSET
)

func wait(addr *uint32, val uint32, timeout time.Duration) {
	ts := unix.NsecToTimespec(int64(timeout))
	// EAGAIN (the word already changed), ETIMEDOUT and EINTR all mean the
	// same to the caller: look at the word again.
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWait,
		uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

func waitMask(addr *uint32, val uint32, timeout time.Duration, mask uint32) {
	var now unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
	ts := unix.NsecToTimespec(now.Nano() + int64(timeout))
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWaitBitset,
		uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, uintptr(mask))
}

func wakeMask(addr *uint32, n int, mask uint32) int {
	woke, _, errno := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWakeBitset,
		uintptr(n), 0, 0, uintptr(mask))
	if errno != 0 {
		return 0
	}
	return int(woke)
}

func wake(addr *uint32, n int) int {
	woke, _, errno := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWake,
		uintptr(n), 0, 0, 0)
	if errno != 0 {
		return 0
	}
	return int(woke)
}
