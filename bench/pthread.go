//go:build linux && cgo && shmlock_pthread

// The POSIX robust, process-shared pthread mutex, through cgo: a peer for the
// benchmarks only, built with -tags shmlock_pthread, so that the library and
// the default build stay free of cgo.
package bench

/*
#include <errno.h>
#include <pthread.h>

static int robust_init(pthread_mutex_t *m) {
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	int r = pthread_mutex_init(m, &a);
	pthread_mutexattr_destroy(&a);
	return r;
}

// robust_lock returns 1 when the previous owner died (EOWNERDEAD), after
// making the mutex consistent again.
static int robust_lock(pthread_mutex_t *m) {
	int r = pthread_mutex_lock(m);
	if (r == EOWNERDEAD) {
		pthread_mutex_consistent(m);
		return 1;
	}
	return r == 0 ? 0 : -r;
}

static void robust_unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

// A process-shared rwlock: not robust (POSIX has no robust rwlocks); a
// reader or writer that dies holding it leaves it held.
static int rw_init(pthread_rwlock_t *l) {
	pthread_rwlockattr_t a;
	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	int r = pthread_rwlock_init(l, &a);
	pthread_rwlockattr_destroy(&a);
	return r;
}
static void rw_rdlock(pthread_rwlock_t *l) { pthread_rwlock_rdlock(l); }
static void rw_wrlock(pthread_rwlock_t *l) { pthread_rwlock_wrlock(l); }
static void rw_unlock(pthread_rwlock_t *l) { pthread_rwlock_unlock(l); }
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"

	iregion "github.com/shmlock/shmlock/internal/region"
)

func init() {
	pthreadPeer = openPthread
	peerNames = append(peerNames, "pthreadrobust")
	pthreadRW = openPthreadRW
}

// pthreadRWLock lives in the RW region's data line at e.pthread. Its writer
// belongs to a thread: the goroutine stays on one for the hold.
type pthreadRWLock struct{ l *C.pthread_rwlock_t }

func openPthreadRW(e *rwEnv, create bool) (rwPeer, error) {
	b, err := e.r.Bytes(e.pthread, 64)
	if err != nil {
		return nil, err
	}
	if unsafe.Sizeof(C.pthread_rwlock_t{}) > 64 {
		return nil, fmt.Errorf("pthread_rwlock_t does not fit a cache line")
	}
	l := (*C.pthread_rwlock_t)(unsafe.Pointer(&b[0]))
	if create {
		if r := C.rw_init(l); r != 0 {
			return nil, fmt.Errorf("pthread_rwlock_init: %d", r)
		}
	}
	return pthreadRWLock{l}, nil
}

func (p pthreadRWLock) Lock()    { runtime.LockOSThread(); C.rw_wrlock(p.l) }
func (p pthreadRWLock) Unlock()  { C.rw_unlock(p.l); runtime.UnlockOSThread() }
func (p pthreadRWLock) RLock()   { C.rw_rdlock(p.l) }
func (p pthreadRWLock) RUnlock() { C.rw_unlock(p.l) }

// pthreadMutex lives in the region's cache line at pthreadOff. A pthread
// mutex belongs to a thread: the goroutine stays on one for the hold.
type pthreadMutex struct{ m *C.pthread_mutex_t }

func openPthread(e *peerEnv, create bool) (peer, error) {
	line, err := iregion.Of(e.r).Line(pthreadOff)
	if err != nil {
		return nil, err
	}
	if unsafe.Sizeof(C.pthread_mutex_t{}) > 64 {
		return nil, fmt.Errorf("pthread_mutex_t does not fit a cache line")
	}
	m := (*C.pthread_mutex_t)(unsafe.Pointer(&line[0]))
	if create {
		if r := C.robust_init(m); r != 0 {
			return nil, fmt.Errorf("pthread_mutex_init: %d", r)
		}
	}
	return pthreadMutex{m}, nil
}

func (p pthreadMutex) Lock() {
	runtime.LockOSThread()
	if r := C.robust_lock(p.m); r < 0 {
		panic(fmt.Sprintf("pthread_mutex_lock: %d", -r))
	}
}

func (p pthreadMutex) Unlock() {
	C.robust_unlock(p.m)
	runtime.UnlockOSThread()
}
