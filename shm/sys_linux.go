package shm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/edsrzf/mmap-go"
	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/robust"
)

// supported: this system has what a region needs (OFD locks, shared futexes).
const supported = true

// Open file description locks: owned by the open file description, not the
// process, so closing some other descriptor of the same file (as a library
// user might) does not drop them, unlike classic POSIX record locks, and two
// Regions of one process exclude each other; and they see and are seen by
// every other OFD lock on the file, whatever process or PID namespace holds
// it.
func byteLock(typ lockType, off int64) *unix.Flock_t {
	t := int16(unix.F_UNLCK)
	switch typ {
	case shared:
		t = unix.F_RDLCK
	case exclusive:
		t = unix.F_WRLCK
	}
	return &unix.Flock_t{Type: t, Whence: 0, Start: off, Len: 1}
}

// tryLock takes a lock of type typ (exclusive or shared) on one byte, or
// fails with errLocked.
func tryLock(fd int, typ lockType, off int64) error {
	err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, byteLock(typ, off))
	if err == unix.EAGAIN || err == unix.EACCES {
		return errLocked
	}
	return err
}

func unlockByte(fd int, off int64) error {
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, byteLock(unlocked, off))
}

// queryLock returns the type of a lock that another open file description
// holds on the byte, or unlocked.
func queryLock(fd int, off int64) (lockType, error) {
	lk := byteLock(exclusive, off)
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, lk); err != nil {
		return unlocked, err
	}
	switch lk.Type {
	case unix.F_RDLCK:
		return shared, nil
	case unix.F_WRLCK:
		return exclusive, nil
	}
	return unlocked, nil
}

// seekData returns the first offset at or after off that the file holds data
// for; ok is false if there is none. Where the file system cannot tell, all
// is data.
func seekData(fd int, off int64) (d int64, ok bool) {
	d, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case err == unix.ENXIO:
		return 0, false
	case err != nil || d < off:
		return off, true
	}
	return d, true
}

// seekHole returns the first offset at or after off, which holds data, that
// the file holds no data for; end where the file system cannot tell.
func seekHole(fd int, off, end int64) int64 {
	h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil || h <= off {
		return end
	}
	return h
}

// mapShared maps the first n bytes of f, shared, read-only or writable. A
// writable mapping, whose locks may be taken, leaves its range reserved
// (PROT_NONE) for a while when it is unmapped (robust.Hold), so that the
// kernel does not give it to the next mapping at once: a use that raced
// Close faults there, rather than reaching another region's lock.
func mapShared(f *os.File, n int, readOnly bool) ([]byte, func() error, error) {
	if readOnly {
		m, err := mmap.MapRegion(f, n, mmap.RDONLY, 0, 0)
		if err != nil {
			return nil, nil, err
		}
		return m, m.Unmap, nil
	}
	// Mapped by address, not through unix.Mmap, which would keep a record
	// of the mapping for unix.Munmap that the reservation below outlives.
	p, err := unix.MmapPtr(int(f.Fd()), 0, nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	size := uintptr(n)
	unmap := func() error {
		if err := robust.Reserve(p, size); err != nil {
			return unix.MunmapPtr(p, size)
		}
		robust.Hold(p, size)
		return nil
	}
	return unsafe.Slice((*byte)(p), n), unmap, nil
}

// openFile opens the region file at path, creating it if create is set and it
// does not exist, and reports whether it created it. It never opens an
// existing file with O_CREAT: fs.protected_regular (systemd's default) makes
// such an open fail with EACCES for another user's file in a sticky directory
// such as /dev/shm, whatever its mode. A new file is made with O_CREAT|O_EXCL,
// then given perm exactly (the umask ignored) and, if gid is not 0, that
// group, before it has any content: racing openers wait for its header on
// the lock on byte 0, and one that finds it still empty and closed to it
// tries again for a moment.
//
// O_NOFOLLOW: a symbolic link planted at the path must not redirect us.
// O_NONBLOCK: a FIFO planted there must not hang the open. os adds
// O_CLOEXEC, so no child process inherits the descriptor (and with it our
// liveness lock).
func openFile(path string, create bool, perm fs.FileMode, gid int, readOnly bool) (*os.File, bool, *Error) {
	flag := os.O_RDWR | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	if readOnly {
		flag = os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	}
	deadline := time.Now().Add(100 * time.Millisecond)
	for {
		f, err := os.OpenFile(path, flag, 0)
		switch {
		case err == nil:
			return f, false, nil
		case errors.Is(err, fs.ErrPermission) && time.Now().Before(deadline) && emptyFile(path):
			time.Sleep(time.Millisecond) // its creator has yet to set its mode
			continue
		case !errors.Is(err, fs.ErrNotExist) || !create:
			return nil, false, openError(path, err)
		}
		f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL, perm&fs.ModePerm)
		switch {
		case errors.Is(err, fs.ErrExist):
			continue // another opener created it first: open theirs
		case err != nil:
			return nil, false, openError(path, err)
		}
		if err := f.Chmod(perm); err != nil {
			return nil, false, discard(f, path, "setting its mode", err)
		}
		if gid != 0 {
			if err := f.Chown(-1, gid); err != nil {
				return nil, false, discard(f, path, fmt.Sprintf("giving it to group %d", gid), err)
			}
		}
		return f, true, nil
	}
}

// discard removes the file f just created at path, which could not be made
// what was asked: nobody can have used it yet.
func discard(f *os.File, path, what string, err error) *Error {
	os.Remove(path)
	f.Close()
	return &Error{Op: "open", Path: path, Detail: what, Err: unwrapPath(err)}
}

func emptyFile(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == 0
}

// openError describes a failed open of path: the kind of file that is there
// when it is not one a region can be, and the file's owner and mode when it
// is closed to this process.
func openError(path string, err error) *Error {
	e := &Error{Op: "open", Path: path, Err: unwrapPath(err)}
	fi, serr := os.Lstat(path)
	switch {
	case serr != nil:
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Kind, e.Detail = ErrNotRegion, "it is a symbolic link"
	case !fi.Mode().IsRegular():
		// A directory (EISDIR), a UNIX socket (ENXIO), a device.
		e.Kind, e.Detail = ErrNotRegion, "it is "+kindOf(fi.Mode())
	case errors.Is(err, fs.ErrPermission):
		e.Detail = deniedBy(fi)
	}
	return e
}

// deniedBy says why fi is closed to this process: its owner, group and mode,
// and who this process is.
func deniedBy(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "mode " + fi.Mode().String()
	}
	groups, _ := os.Getgroups()
	return fmt.Sprintf("the file is owned by %s, group %s, mode %v; this process is %s, group %s (also in %v)",
		userName(int(st.Uid)), groupName(int(st.Gid)), fi.Mode().Perm(),
		userName(os.Geteuid()), groupName(os.Getegid()), groups)
}

func userName(uid int) string { return "uid " + idName(uid, "/etc/passwd") }

func groupName(gid int) string { return idName(gid, "/etc/group") }

// idName is id and, if the database file (/etc/passwd, /etc/group: name, a
// password field, then the ID) has it, its name. Read by hand: os/user would
// link the C library into every program that imports this package.
func idName(id int, db string) string {
	s := strconv.Itoa(id)
	b, _ := os.ReadFile(db)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(line, ":", 4); len(f) >= 3 && f[2] == s {
			return s + " (" + f[0] + ")"
		}
	}
	return s
}

// unwrapPath drops the *fs.PathError around a system call's error: the
// Error that wraps it names the operation and the path already.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// allocate gives the file storage for the n bytes at offset off of the file,
// so that the first touch of their pages through a mapping cannot fail: on a
// full file system (a container's /dev/shm) a store to a page the file does
// not have yet raises SIGBUS, which ends the process; here it is ENOSPC, an
// error. what says what needs the bytes. A file system that cannot allocate
// ahead (EOPNOTSUPP) is left to allocate as pages are touched.
func (r *Region) allocate(op string, off, n int64, what string) error {
	// The file system allocates whole pages.
	n = (off+n+pageSize-1)/pageSize*pageSize - off/pageSize*pageSize
	off = off / pageSize * pageSize
	for {
		err := unix.Fallocate(int(r.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, off, n)
		switch err {
		case nil, unix.EOPNOTSUPP, unix.ENOSYS:
			return nil
		case unix.EINTR:
			continue
		case unix.ENOSPC, unix.EDQUOT:
			return r.noSpace(op, n, what, err)
		}
		return &Error{Op: op, Path: r.path, Detail: "allocating " + what, Err: err}
	}
}

// noSpace is the error for n bytes that what needed and the file system did
// not have; err is the system's ENOSPC or EDQUOT.
func (r *Region) noSpace(op string, n int64, what string, err error) *Error {
	return &Error{Op: op, Path: r.path, Kind: ErrNoSpace, Err: err,
		Detail: fmt.Sprintf("%s needed for %s; %s", bytes(n), what, describeFS(int(r.f.Fd()), r.path))}
}

// noSpaceIn makes a failed write's ENOSPC (or EDQUOT) a noSpace error.
func (r *Region) noSpaceIn(op string, n int64, what string, err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return r.noSpace(op, n, what, unwrapPath(err))
	}
	return err
}

// describeFS describes the file system that holds the file fd at path: its
// type, mount point, size and free space.
func describeFS(fd int, path string) string {
	var st unix.Statfs_t
	if unix.Fstatfs(fd, &st) != nil {
		return "its file system is full"
	}
	name := fmt.Sprintf("file system type %#x", uint32(st.Type))
	switch uint32(st.Type) {
	case unix.TMPFS_MAGIC:
		name = "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		name = "ext4"
	case unix.XFS_SUPER_MAGIC:
		name = "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		name = "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		name = "overlayfs"
	}
	if mp := mountPoint(path); mp != "" {
		name += " at " + mp
	}
	return fmt.Sprintf("%s holds %s, %s of it free", name, bytes(int64(st.Blocks)*int64(st.Bsize)), bytes(int64(st.Bavail)*int64(st.Bsize)))
}

// mountPoint returns the mount point under which path lies, from
// /proc/self/mountinfo, or "" if it cannot tell.
func mountPoint(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	best := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best = mp
		}
	}
	return best
}

// bytes formats a size for people.
func bytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.4g MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.4g KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
