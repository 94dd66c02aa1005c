package shm

import (
	"errors"
	"time"
)

// The region's file locks (see layout.go) are one-byte OFD locks (sys_linux.go).
var (
	errLocked  = errors.New("byte is locked")
	errTimeout = errors.New("timed out waiting for a file lock")
)

// lockType is the type of a byte lock.
type lockType uint8

const (
	unlocked  lockType = iota
	shared             // F_RDLCK
	exclusive          // F_WRLCK
)

// tryLockByte takes an exclusive lock on one byte, or fails with errLocked.
func tryLockByte(fd int, off int64) error { return tryLock(fd, exclusive, off) }

// lockWait takes a lock of type typ on one byte, waiting at most timeout. It
// polls rather than blocking in F_SETLKW so that the wait is bounded.
func lockWait(fd int, typ lockType, off int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for sleep := 50 * time.Microsecond; ; sleep = min(2*sleep, 10*time.Millisecond) {
		err := tryLock(fd, typ, off)
		if err != errLocked {
			return err
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(sleep)
	}
}

// queryByte reports whether another open file description holds a lock on
// the byte.
func queryByte(fd int, off int64) (bool, error) {
	typ, err := queryLock(fd, off)
	return typ != unlocked, err
}
