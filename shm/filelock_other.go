//go:build !linux

package shm

import "golang.org/x/sys/unix"

// Without OFD locks, classic POSIX record locks stand in. They belong to the
// process and are dropped when it closes any descriptor of the file, so they
// are weaker evidence; this port is built but not tested.
const (
	cmdSetLock = unix.F_SETLK
	cmdGetLock = unix.F_GETLK
	lockIsOFD  = false
)
