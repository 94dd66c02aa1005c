//go:build !linux

package owner

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

type realSys struct{}

func (realSys) Kill0(pid int) error {
	if pid <= 0 {
		return unix.EINVAL
	}
	switch err := unix.Kill(pid, 0); err {
	case nil:
		return nil
	case unix.ESRCH:
		return errNoProcess
	case unix.EPERM:
		return errPermission
	default:
		return err
	}
}

// Without /proc there is no start time or state to read: the probe falls back
// to kill(pid, 0) and the liveness lock.
func (realSys) Stat(pid int) (Stat, error) { return Stat{}, errors.ErrUnsupported }

// PIDMax is the largest PID the probe accepts as valid.
func PIDMax() int32 { return 99999 }

// Systems without /proc have no PID namespaces: every process shares the one
// namespace, numbered 1 here so that kill(pid, 0) evidence is used.
func readSelf() Process { return Process{PID: int32(os.Getpid()), NS: 1} }
