// Package shmlock provides mutual exclusion locks that live in shared
// memory, are shared by every process that maps the same region (see package
// shm), and survive the death of their holders.
//
// A Mutex is one 64-bit owner word in the region. Locking an uncontended Mutex
// is one compare-and-swap, unlocking one more; everything that makes it
// robust happens on the slow path. A waiter spins briefly, then sleeps on a
// futex. When a holder is killed, crashes or exits while holding, the lock is
// freed for exactly one waiter to take over: in shm.ModeRobust, the default on
// Linux, the kernel itself marks the word (the holder's process registered it
// in a robust futex list) and wakes a waiter; in shm.ModeProbe, and behind the
// kernel as a safety net, a waiter that probes the holder (by its liveness
// lock in the region file and its process's state) and finds it dead takes
// the lock over by one compare-and-swap from the dead holder's exact owner
// word to its own. The taker is told (guard.Guard.Recovered), as POSIX robust
// mutexes return EOWNERDEAD, so it can repair the data the lock protects.
//
// A holder that is alive, however slow or stopped, is never robbed; one whose
// death cannot be verified is not either, and an administrator can free its
// lock with Mutex.Break, naming its exact owner word.
//
// An RWMutex adds shared holds: readers in any number of processes, or one
// writer. Its writers take a Mutex; its readers count their shares on lines
// of their own, each under its process's owner ID, so a writer that waits
// for the shares of a reader that died frees them, on the same evidence of
// death, and RWMutex.BreakReader frees those of a reader whose death cannot
// be verified.
package shmlock
