// Package futex waits on and wakes a 32-bit word in memory shared between
// processes.
//
// On Linux it is the futex(2) system call without FUTEX_PRIVATE_FLAG, so a
// waiter in one process is woken by a Wake in another process that maps the
// same file. Elsewhere Wait sleeps for a short while and returns, which keeps
// the callers' retry loops correct, only slower.
package futex

import "time"

// MaxSleep bounds a single sleep of the fallback used where there is no
// futex; callers re-check their condition after every return.
const MaxSleep = time.Millisecond

// Wait blocks while *addr == val, until Wake is called on addr, the timeout
// passes, or a signal interrupts it. It may also return spuriously. A timeout
// of zero or less returns at once. Callers must re-check their condition.
func Wait(addr *uint32, val uint32, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	wait(addr, val, timeout)
}

// WaitMask is Wait for a sleeper that a WakeMask with a mask sharing a bit
// with mask (nonzero) may wake; Wake wakes it as any other.
func WaitMask(addr *uint32, val uint32, timeout time.Duration, mask uint32) {
	if timeout <= 0 {
		return
	}
	waitMask(addr, val, timeout, mask)
}

// WakeMask is Wake restricted to the sleepers whose WaitMask mask shares a
// bit with mask; those of Wait match every mask.
func WakeMask(addr *uint32, n int, mask uint32) int {
	return wakeMask(addr, n, mask)
}

// Wake wakes at most n waiters sleeping on addr and returns how many it woke
// (0 where there is no futex).
func Wake(addr *uint32, n int) int {
	return wake(addr, n)
}
