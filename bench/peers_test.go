//go:build linux

package bench

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock"
	iregion "github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// A peer is a cross-process lock a Go program could use instead of shmlock,
// held as a sync.Locker, as a program would hold any of them. Each peer is its
// own dynamic type (shmlock's is *shmlock.Mutex itself), so an interface call
// reaches its Lock with no wrapper in between. Peers that hold a resource
// also have a Close method (see closePeer). Every peer guards the same
// counter, in the same shared region, so that contended runs can check the
// count.
type peer = sync.Locker

func closePeer(p peer) {
	if c, ok := p.(interface{ Close() }); ok {
		c.Close()
	}
}

// peerNames are fixed so results compare across versions. shmlock-probe and
// shmlock-robust are the two modes of shmlock.Mutex (shm.Mode), each in a
// region of its own.
var peerNames = []string{"shmlock-probe", "shmlock-robust", "syncmutex", "naivespin", "flock", "ofd", "sysvsem"}

// peerRegion lays out the lock words the in-memory peers use and the shared
// counter: shmlock's Mutex at 0, the naive spinlock's word at 64, the
// counter at 128.
const (
	peerMutexOff   = 0
	peerSpinOff    = 64
	peerCounterOff = 128
	peerHeldOff    = 136 // recovery: the holder holds
	peerReadyOff   = 144 // recovery: the waiter is about to wait
	peerAcqOff     = 152 // recovery: CLOCK_MONOTONIC ns when the waiter got the lock
	peerReadyN     = 160 // contended: workers at the start line
	peerGo         = 168 // contended: nonzero once all may start
	peerCPU        = 176 // contended: CPU ns the workers spent in their loops
	pthreadOff     = 192 // the pthread robust mutex (-tags shmlock_pthread)
	// parallelOff: the lines of BenchmarkParallel's locks, one per
	// goroutine (at most parallelLocks).
	parallelOff    = 1024
	parallelLocks  = 64
	peerRegionSize = parallelOff + parallelLocks*shm.LineSize
)

// pthreadPeer opens the cgo robust pthread mutex, in builds with
// -tags shmlock_pthread (see pthread.go); nil otherwise.
var pthreadPeer func(e *peerEnv, create bool) (peer, error)

type peerEnv struct {
	r       *shm.Region // in probe mode: the counter, the control words, every peer but one
	rr      *shm.Region // in robust mode: shmlock-robust's Mutex (path+".robust")
	counter *uint64
	ctl     []uint64 // held, ready, acquired, readyN, go, cpu
	path    string   // the region; file locks lock path+".lock"
}

func openPeerEnv(path string) (*peerEnv, error) {
	r, err := shm.Open(path, shm.Options{Size: peerRegionSize, Slots: 256, Mode: shm.ModeProbe})
	if err != nil {
		return nil, err
	}
	rr, err := shm.Open(path+".robust", shm.Options{Size: peerRegionSize, Slots: 256, Mode: shm.ModeRobust})
	if err != nil {
		r.Close()
		return nil, err
	}
	b, _ := r.Bytes(peerCounterOff, 56)
	w := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), 7)
	return &peerEnv{r: r, rr: rr, counter: &w[0], ctl: w[1:], path: path}, nil
}

func (e *peerEnv) close() {
	e.r.Close()
	e.rr.Close()
}

// region returns the region in which the shmlock peer name lives.
func (e *peerEnv) region(name string) *shm.Region {
	if name == "shmlock-robust" {
		return e.rr
	}
	return e.r
}

func (e *peerEnv) open(name string) (peer, error) {
	switch name {
	case "shmlock-probe", "shmlock-robust":
		return shmlock.New(e.region(name), peerMutexOff)
	case "syncmutex":
		// One process only, the floor for a lock word in memory. Its
		// contended runs use goroutines, not processes.
		return new(sync.Mutex), nil
	case "naivespin":
		line, err := iregion.Of(e.r).Line(peerSpinOff)
		return spinPeer{&line[0]}, err
	case "flock", "ofd":
		fd, err := unix.Open(e.path+".lock", unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, err
		}
		if name == "flock" {
			return flockPeer{fd}, nil
		}
		return ofdPeer{fd}, nil
	case "sysvsem":
		return openSem(e.path)
	case "pthreadrobust":
		return pthreadPeer(e, false)
	}
	return nil, fmt.Errorf("no peer %q", name)
}

// spinPeer is a test-and-test-and-set spinlock on a shared word, with no
// robustness: what robustness costs is measured against it. A dead holder
// wedges it for ever.
type spinPeer struct{ w *uint64 }

func (p spinPeer) Lock() {
	for i := 0; ; i++ {
		if atomic.LoadUint64(p.w) == 0 && atomic.CompareAndSwapUint64(p.w, 0, 1) {
			return
		}
		if i%64 == 63 {
			runtime.Gosched()
		}
	}
}

func (p spinPeer) Unlock() { atomic.StoreUint64(p.w, 0) }

// flockPeer is flock(2) on a lock file, what gofrs/flock does.
type flockPeer struct{ fd int }

func (p flockPeer) Lock()   { must(unix.Flock(p.fd, unix.LOCK_EX)) }
func (p flockPeer) Unlock() { must(unix.Flock(p.fd, unix.LOCK_UN)) }
func (p flockPeer) Close()  { unix.Close(p.fd) }

// ofdPeer is an open-file-description lock on the lock file's first byte.
type ofdPeer struct{ fd int }

func (p ofdPeer) Lock() {
	must(unix.FcntlFlock(uintptr(p.fd), unix.F_OFD_SETLKW, &unix.Flock_t{Type: unix.F_WRLCK, Len: 1}))
}

func (p ofdPeer) Unlock() {
	must(unix.FcntlFlock(uintptr(p.fd), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_UNLCK, Len: 1}))
}
func (p ofdPeer) Close() { unix.Close(p.fd) }

// semPeer is a System V semaphore taken with SEM_UNDO, which the kernel
// undoes when its holder dies.
type semPeer struct{ id int }

type sembuf struct {
	num uint16
	op  int16
	flg int16
}

const semUndo = 0x1000 // SEM_UNDO

func openSem(path string) (peer, error) {
	if f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		f.Close()
	}
	key, err := ftok(path+".lock", 's')
	if err != nil {
		return nil, err
	}
	id, _, errno := unix.Syscall(unix.SYS_SEMGET, uintptr(key), 1, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if errno == unix.EEXIST {
		id, _, errno = unix.Syscall(unix.SYS_SEMGET, uintptr(key), 1, 0o600)
	} else if errno == 0 {
		// New: value 1, free. (SETVAL = 16.)
		if _, _, e := unix.Syscall6(unix.SYS_SEMCTL, id, 0, 16, 1, 0, 0); e != 0 {
			return nil, e
		}
	}
	if errno != 0 {
		return nil, errno
	}
	return semPeer{int(id)}, nil
}

// ftok derives a System V key from a file, as ftok(3) does.
func ftok(path string, proj byte) (int32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return int32(uint32(st.Ino&0xffff) | uint32(st.Dev&0xff)<<16 | uint32(proj)<<24), nil
}

func (p semPeer) op(delta int16) {
	b := sembuf{0, delta, semUndo}
	for {
		_, _, e := unix.Syscall(unix.SYS_SEMOP, uintptr(p.id), uintptr(unsafe.Pointer(&b)), 1)
		if e != unix.EINTR {
			if e != 0 {
				panic(e)
			}
			return
		}
	}
}

func (p semPeer) Lock()   { p.op(-1) }
func (p semPeer) Unlock() { p.op(1) }

// removeSem deletes the semaphore set of path (IPC_RMID = 0).
func removeSem(path string) {
	if key, err := ftok(path+".lock", 's'); err == nil {
		if id, _, e := unix.Syscall(unix.SYS_SEMGET, uintptr(key), 1, 0o600); e == 0 {
			unix.Syscall(unix.SYS_SEMCTL, id, 0, 0)
		}
	}
}

// openChildPeer opens, in a child, the region args[0] and the peer args[1].
func openChildPeer(args []string) (*peerEnv, peer, error) {
	e, err := openPeerEnv(args[0])
	if err != nil {
		return nil, nil, err
	}
	p, err := e.open(args[1])
	return e, p, err
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
