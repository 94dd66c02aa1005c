//go:build !linux

package shm

import (
	"errors"
	"io/fs"
	"os"
)

// supported: regions need Linux (OFD locks, shared futexes, robust futex
// lists); elsewhere the package builds, and Open fails with ErrUnsupported.
const supported = false

var errUnsupported = errors.New("shm: not supported on this system")

func tryLock(fd int, typ lockType, off int64) error { return errUnsupported }
func unlockByte(fd int, off int64) error            { return errUnsupported }
func queryLock(fd int, off int64) (lockType, error) { return unlocked, errUnsupported }
func seekData(fd int, off int64) (int64, bool)      { return off, true }
func seekHole(fd int, off, end int64) int64         { return end }
func mapShared(*os.File, int, bool) ([]byte, func() error, error) {
	return nil, nil, errUnsupported
}

func openFile(path string, create bool, perm fs.FileMode, gid int, readOnly bool) (*os.File, bool, *Error) {
	return nil, false, &Error{Op: "open", Path: path, Kind: ErrUnsupported}
}

func (r *Region) allocate(op string, off, n int64, what string) error { return errUnsupported }

func unwrapPath(err error) error { return err }

func (r *Region) noSpaceIn(op string, n int64, what string, err error) error { return err }
