package shmlock

import "github.com/shmlock/shmlock/internal/line"

import "time"

// SetProbeSchedule replaces the prober's schedules, both modes' (see schedule), for
// test children that must not be rescued by a probe, and returns the function
// that restores the previous one. Not safe while locks are waited for.
func SetProbeSchedule(delay, min, max time.Duration) (restore func()) {
	old, oldRobust := probeSchedule, robustSchedule
	probeSchedule = schedule{delay, min, max}
	robustSchedule = probeSchedule
	return func() { probeSchedule, robustSchedule = old, oldRobust }
}

// SetWaitHook sets the function every round of a waiter's loop calls (nil: none).
func SetWaitHook(f func()) {
	if f == nil {
		waitHook.Store(nil)
		return
	}
	waitHook.Store(&f)
}

// SetStarveAfter replaces how long a waiter waits before releases hand the lock
// to the sleepers, and returns the function that restores it. Not safe while
// locks are waited for.
func SetStarveAfter(d time.Duration) (restore func()) {
	old := starveAfter
	starveAfter = d
	return func() { starveAfter = old }
}

// WaitWord returns the wait word of the lock at off of r (wait.go), and its
// probing bit.
func WaitWord(l *[8]uint64) *uint64 { return &l[line.Wait] }

const (
	Probing  = probing
	Starving = starving
)

// Shares returns this attachment's share count of rw, for tests that set it
// near its limit.
func Shares(rw *RWMutex) *uint32 { return rw.mine }
