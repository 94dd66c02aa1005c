package shm

import "golang.org/x/sys/unix"

// Open file description locks: owned by the open file description, not the
// process, so closing some other descriptor of the same file (as a library
// user might) does not drop them, unlike classic POSIX record locks; and they
// see and are seen by every other OFD lock on the file, whatever process or
// PID namespace holds it.
const (
	cmdSetLock = unix.F_OFD_SETLK
	cmdGetLock = unix.F_OFD_GETLK
	lockIsOFD  = true
)
