package shmlock

import "time"

// SetProbeSchedule replaces the waiters' probe schedule (see probeDelay) for
// the rest of the process: for test children that must not be rescued by a
// probe.
func SetProbeSchedule(delay, min, max time.Duration) {
	probeSchedule.delay, probeSchedule.min, probeSchedule.max = delay, min, max
}
