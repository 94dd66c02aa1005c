package shm

import (
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/owner"
)

// startWatch waits for the process attached as id to exit, through a pidfd
// registered with the Go runtime's poller: no thread is parked, and closing the
// pidfd cancels the wait. A pidfd turns readable once its process has exited.
// Exit closes the process's files first, but the liveness lock goes only with
// the last reference to the region file, and the process's mapping holds one
// until its memory is torn down, which a reader of its /proc files can delay
// for a moment: the probe that follows may still find the lock held.
func (r *Region) startWatch(id uint32, w *watch) watchStart {
	slot := slotOf(id)
	if id>>idBits != 0 || slot == 0 || slot > r.slots || id == r.id {
		return watchNone
	}
	e := r.entry(slot)
	reclaimed := func() bool { return atomic.LoadUint32(e.incarnation) != incarnationOf(id) }
	if reclaimed() {
		return watchGone
	}
	pid, ns := atomic.LoadInt32(e.pid), atomic.LoadUint64(e.pidns)
	// A pidfd names a process of our own PID namespace; the same number in
	// another namespace is some other process, or none.
	if ns == 0 || ns != r.self.NS || pid <= 0 || pid > owner.PIDMax() {
		return watchNone
	}
	fd, err := unix.PidfdOpen(int(pid), unix.PIDFD_NONBLOCK)
	switch {
	case err == unix.ESRCH:
		return watchGone
	case err != nil:
		return watchNone
	}
	// The slot's fields were read before the pidfd was opened: if it was
	// claimed again meanwhile, the pid may be another process's now, and the
	// holder is gone anyway.
	if reclaimed() {
		unix.Close(fd)
		return watchGone
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return watchNone
	}
	w.cancel = func() { f.Close() }
	go func() {
		defer f.Close()
		err := rc.Read(func(fd uintptr) bool {
			// Readable means exited. The poller wakes us on the edge,
			// and remembers an edge that came before we waited.
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				n, err := unix.Poll(p, 0)
				if err != unix.EINTR {
					return err != nil || n > 0
				}
			}
		})
		if err == nil {
			r.fire(w)
		}
		// Otherwise the wait was cancelled (the file closed), or the
		// poller cannot wait on pidfds here: probes find the death.
	}()
	return watchStarted
}
