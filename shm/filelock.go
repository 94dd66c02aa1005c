package shm

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

var (
	errLocked  = errors.New("byte is locked")
	errTimeout = errors.New("timed out waiting for a file lock")
)

func byteLock(typ int16, off int64) *unix.Flock_t {
	return &unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: 1}
}

// tryLockByte takes an exclusive lock on one byte, or fails with errLocked.
func tryLockByte(fd int, off int64) error { return tryLock(fd, unix.F_WRLCK, off) }

// tryLock takes a lock of type typ (F_WRLCK, exclusive, or F_RDLCK, shared)
// on one byte, or fails with errLocked.
func tryLock(fd int, typ int16, off int64) error {
	err := unix.FcntlFlock(uintptr(fd), cmdSetLock, byteLock(typ, off))
	if err == unix.EAGAIN || err == unix.EACCES {
		return errLocked
	}
	return err
}

// lockWait takes a lock of type typ on one byte, waiting at most timeout. It
// polls rather than blocking in F_SETLKW so that the wait is bounded.
func lockWait(fd int, typ int16, off int64, timeout time.Duration) error {
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

func unlockByte(fd int, off int64) error {
	return unix.FcntlFlock(uintptr(fd), cmdSetLock, byteLock(unix.F_UNLCK, off))
}

// queryByte reports whether another open file description holds a lock on
// the byte.
func queryByte(fd int, off int64) (bool, error) {
	typ, err := queryLock(fd, off)
	return typ != unix.F_UNLCK, err
}

// queryLock returns the type of a lock that another open file description
// holds on the byte (F_WRLCK, F_RDLCK), or F_UNLCK.
func queryLock(fd int, off int64) (int16, error) {
	lk := byteLock(unix.F_WRLCK, off)
	if err := unix.FcntlFlock(uintptr(fd), cmdGetLock, lk); err != nil {
		return unix.F_UNLCK, err
	}
	return lk.Type, nil
}
