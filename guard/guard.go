// Package guard is the release-once guard that shmlock's lockers return.
//
// A Guard ends a critical section exactly once. It follows the database/sql
// transaction idiom:
//
//	g, err := mu.Acquire(ctx)
//	if err != nil {
//		return err
//	}
//	defer g.Release()
//	… the critical section …
//	g.Commit()
//
// A Release that comes without a Commit is the abort path: the critical
// section did not finish, because it panicked, called runtime.Goexit (as
// t.FailNow does) or returned early. The lock then restores the state it
// protects before releasing (a seqlock marks its record dirty and makes its
// sequence even again; a plain mutex has nothing to restore), and a panic goes
// on unwinding with its original value and stack, since Release never calls
// recover.
//
// Why not recover-and-repanic inside the deferred Release? It cannot see
// runtime.Goexit or an early return, both of which it would treat as success,
// publishing a half-done write; and re-panicking rewrites the panic ("[recovered]")
// that the caller sees. Commit states success explicitly, so everything else
// is, correctly, not success.
package guard

// Releaser is the lock behind a Guard.
type Releaser interface {
	// Release ends the hold whose fencing token is fence. committed is
	// false on the abort path, when the protected state may be half
	// updated. A fence that does not name the lock's current hold (a
	// second release of one hold, through a copy of its Guard) must not
	// release anything: the lock panics instead, as an unlock of a
	// sync.Mutex that is not locked is fatal.
	Release(fence uint64, committed bool)
}

// Guard is one hold of a lock, and a value: returning it costs no
// allocation, so the path that is told of a death costs what the bare one
// does. It is used by the goroutine that took it and is not safe for
// concurrent use. Release it through the variable it was returned in (defer
// g.Release()); a copy is a second handle on the same hold, and releasing
// both panics. The zero Guard holds nothing, and its Release does nothing.
type Guard struct {
	lock  Releaser
	fence uint64
	// flags are one byte, not three bools: a result whose bools are
	// stored apart is read back whole by the caller, and the stores do not
	// forward to the load (BenchmarkFastPath's acquire pair).
	flags uint8
}

const (
	flagHeld      uint8 = 1 << iota // made by New: the zero Guard holds nothing
	flagRecovered                   // the previous holder died, or was broken
	flagCommitted                   // Commit was called
	flagReleased                    // Release was called
)

// New returns a guard over a lock just acquired. recovered says the previous
// holder died (or was broken) without releasing; fence is the acquisition's
// fencing token, which Release hands back to the lock.
func New(lock Releaser, recovered bool, fence uint64) Guard {
	g := Guard{lock: lock, fence: fence, flags: flagHeld}
	if recovered {
		g.flags |= flagRecovered
	}
	return g
}

// Commit marks the critical section as finished, so the next Release is a
// normal release. It does not release the lock.
func (g *Guard) Commit() { g.flags |= flagCommitted }

// Release releases the lock, the first time it is called; later calls do
// nothing. Without a prior Commit it takes the abort path (see the package
// documentation).
func (g *Guard) Release() {
	if g.flags&(flagHeld|flagReleased) == flagHeld {
		g.flags |= flagReleased
		g.lock.Release(g.fence, g.flags&flagCommitted != 0)
	}
}

// Recovered reports whether a holder died, or was broken by an
// administrator, without releasing since the last acquisition that was told:
// the protected state may be half updated and is this holder's to check and
// repair. Each such death is told to one acquisition; several deaths before
// it are told together.
func (g *Guard) Recovered() bool { return g.flags&flagRecovered != 0 }

// Fence returns the acquisition's fencing token: it grows by one with every
// acquisition of the lock (modulo 2^32 for a mutex), so a resource can refuse
// a request carrying a token older than one it has seen.
func (g *Guard) Fence() uint64 { return g.fence }

// Committed reports whether Commit was called.
func (g *Guard) Committed() bool { return g.flags&flagCommitted != 0 }

// Released reports whether Release was called.
func (g *Guard) Released() bool { return g.flags&flagReleased != 0 }
