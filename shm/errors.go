package shm

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"
)

// The kinds of failure Open and the region's accessors report. Match them with
// errors.Is; errors.As with *Error gives the path and the details. Errors from
// the operating system are wrapped too, so errors.Is(err, fs.ErrNotExist) and
// errors.Is(err, fs.ErrPermission) work as usual.
var (
	// ErrNotRegion: the file is not a shmlock region (wrong magic, not a
	// regular file, or written on a machine of the other byte order).
	ErrNotRegion = errors.New("not a shmlock region")
	// ErrVersion: the region has a layout version this package does not read.
	ErrVersion = errors.New("unsupported region layout version")
	// ErrTruncated: the file is shorter than its header says it must be
	// (at Open), or than the mapping (at Bytes: something shrank it).
	ErrTruncated = errors.New("region file is truncated")
	// ErrCorrupt: header fields that contradict each other.
	ErrCorrupt = errors.New("region header is corrupt")
	// ErrTooSmall: the region's data area is smaller than Options.Size.
	ErrTooSmall = errors.New("region is smaller than asked")
	// ErrFull: every slot of the process table is taken by a live process.
	ErrFull = errors.New("region's process table is full")
	// ErrInvalid: a bad argument (path, size, offset, alignment).
	ErrInvalid = errors.New("invalid argument")
	// ErrBusy: another process held the initialisation lock for too long.
	ErrBusy = errors.New("region is being initialised by another process")
	// ErrMode: the region was created in another locking mode than the one
	// asked for, or in one this system does not support (see Mode).
	ErrMode = errors.New("region uses another locking mode")
	// ErrClosed: the region, or the region of a lock, was closed. It
	// matches fs.ErrClosed too.
	ErrClosed error = closedError{}
	// ErrLimit: a limit of this process was reached (its Detail says
	// which): robust lock lines, robust threads, address space.
	ErrLimit = errors.New("a limit of this process was reached")
	// ErrNoSpace: the file system that holds the region has no room for
	// bytes the region needs (its header, its process table, a lock and
	// its data, the bytes of Region.Bytes, or what Options.Allocate
	// asked). The error also matches syscall.ENOSPC (or EDQUOT, for a
	// quota).
	ErrNoSpace = errors.New("no space left for the region")
	// ErrUnsupported: this system lacks a mechanism the region needs.
	ErrUnsupported = errors.New("not supported on this system")
	// ErrLayout: Open was given a Layout, and the region was created
	// with another one, or without one; or a slice or a lock was asked
	// for where the Layout declared at Open does not put it (Bytes over a
	// lock or past a data object, a lock constructor off a lock object's
	// offset, or too big for it).
	ErrLayout = errors.New("region layout does not match")
)

// Error describes a failure about one region file.
type Error struct {
	Op     string // "open", "slice", …
	Path   string
	Kind   error  // one of the Err… values above, or nil for a bare OS error
	Detail string // what exactly was wrong
	Err    error  // the underlying OS error, if any
}

// Error says, once each: the operation and the path, what kind of failure
// (or the system's words for it), and the details.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("shm: ")
	b.WriteString(e.Op)
	b.WriteString(" ")
	b.WriteString(e.Path)
	var errno syscall.Errno
	switch {
	case e.Kind != nil:
		b.WriteString(": ")
		b.WriteString(e.Kind.Error())
	case e.Err != nil:
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	// A bare errno under a kind says again what the kind says.
	if e.Kind != nil && e.Err != nil && !errors.As(e.Err, &errno) {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the kind and the OS error, so errors.Is matches either.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// kindOf names the kind of a file that is not a regular file.
func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSocket != 0:
		return "a UNIX socket"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "not a regular file (" + m.Type().String() + ")"
}

type closedError struct{}

func (closedError) Error() string        { return "region is closed" }
func (closedError) Is(target error) bool { return target == fs.ErrClosed }
