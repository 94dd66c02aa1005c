package owner

import (
	"errors"
	"sync"
)

// Sys is the part of the kernel the probe talks to. Tests replace it to
// record every call; production code uses the real system calls.
type Sys interface {
	// Kill0 is kill(pid, 0). It must only be given pids in [1, PIDMax()].
	Kill0(pid int) error
	// Stat reads /proc/<pid>/stat.
	Stat(pid int) (Stat, error)
}

var (
	errNoProcess  = errors.New("no such process")
	errPermission = errors.New("operation not permitted")
)

var sys Sys = realSys{}

// SetSys replaces the probe's system interface and returns the previous one.
// It exists for tests that must prove which calls the probe makes.
func SetSys(s Sys) Sys {
	old := sys
	sys = s
	return old
}

var (
	selfOnce sync.Once
	self     Process
)

// Self returns this process's identity. Go programs cannot fork without
// exec, so it is computed once.
func Self() Process {
	selfOnce.Do(func() { self = readSelf() })
	return self
}
