package shmlock

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/shmlock/shmlock/shm"
)

var (
	// ErrNotHeld: Unlock of a Mutex that this process does not hold (never
	// locked, already unlocked, or broken by an administrator meanwhile).
	ErrNotHeld = errors.New("shmlock: unlock of a mutex not held by this process")
	// ErrOwnerChanged: Break found another owner than the one it was told.
	ErrOwnerChanged = errors.New("shmlock: owner changed")
	// ErrNotLocked: Break was given an owner word that holds nothing.
	ErrNotLocked = errors.New("shmlock: not locked")
)

func lockName(path string, off int) string { return path + "@" + strconv.Itoa(off) }

// HeldError is returned when a wait for a lock ends (its context is done)
// while another process holds it. It wraps the context's error, so
// errors.Is(err, context.DeadlineExceeded) works.
type HeldError struct {
	Lock   string     // region path @ offset
	Path   string     // the region file
	Off    int        // the lock's offset in the region's data area
	Owner  uint64     // the holder's exact owner word: what Break takes
	Holder shm.Holder // who holds it and whether it is alive, and why
	// Reader says that Holder holds read shares of an RWMutex, not its
	// writers' lock: Owner is then its reader word, what
	// RWMutex.BreakReader takes.
	Reader  bool
	HeldFor time.Duration // the lock has been held at least this long
	Waited  time.Duration // how long this call waited
	Err     error         // the context's error
}

func (e *HeldError) Unwrap() error { return e.Err }

// Error says which lock, how long this call waited and why it stopped, and
// who holds the lock, for how long, and whether the holder is alive. What an
// operator can do about it is Advice.
func (e *HeldError) Error() string {
	h := e.Holder
	if e.Reader {
		return fmt.Sprintf("shmlock: lock %s: gave up after %v (%v): read shares held by pid %d, %s (%s)",
			e.Lock, e.Waited.Round(time.Millisecond), e.Err, h.PID, h.State, h.Reason)
	}
	return fmt.Sprintf("shmlock: lock %s: gave up after %v (%v): held for at least %v by pid %d, %s (%s)",
		e.Lock, e.Waited.Round(time.Millisecond), e.Err, e.HeldFor.Round(time.Millisecond), h.PID, h.State, h.Reason)
}

// Advice says what an operator can do about the holder, in a few sentences
// fit for a log or a terminal: how to find out why a live holder does not
// unlock, how to free the lock of one whose death cannot be verified, with
// the exact command (shmlock break), and where to look at every lock of the
// region (shmlock inspect).
func (e *HeldError) Advice() string {
	h := e.Holder
	switch {
	case h.Self && e.Reader:
		return "Goroutines of this process hold read shares: a writer waits for them to RUnlock, and for ever if it holds one itself."
	case h.Self:
		return "A process that locks a Mutex it already holds waits for itself: unlock it first."
	case h.State == shm.Alive:
		return fmt.Sprintf("A live holder is never robbed: find out why pid %d does not unlock"+
			" (ps -o pid,stat,wchan -p %d; a Go process prints its goroutines on SIGQUIT;"+
			" 'shmlock inspect %s' shows every lock of the region and its holder).", h.PID, h.PID, e.Path)
	case h.State == shm.Unverifiable && e.Reader:
		return fmt.Sprintf("Its death cannot be verified from here, so its read shares are not freed automatically;"+
			" if that process is known to be gone, free them with 'shmlock break %s %d --reader %#x'"+
			" (or RWMutex.BreakReader(%#x)); 'shmlock inspect %s' shows every lock of the region and its holders.",
			e.Path, e.Off, e.Owner, e.Owner, e.Path)
	case h.State == shm.Unverifiable:
		return fmt.Sprintf("Its death cannot be verified from here, so it is not taken over automatically;"+
			" if that process is known to be gone, free the lock with 'shmlock break %s %d --owner %#x'"+
			" (or Mutex.Break(%#x)); 'shmlock inspect %s' shows every lock of the region and its holder.",
			e.Path, e.Off, e.Owner, e.Owner, e.Path)
	default:
		return "The next waiter takes it over."
	}
}

// NotHeldError is the panic value of an Unlock by a process that does not
// hold the Mutex. It matches ErrNotHeld.
type NotHeldError struct {
	Lock  string
	Owner uint64 // the owner word found (an RWMutex's RUnlock: its reader word)
}

func (e *NotHeldError) Error() string {
	return fmt.Sprintf("%v: %s has owner word %#x", ErrNotHeld, e.Lock, e.Owner)
}

func (e *NotHeldError) Unwrap() error { return ErrNotHeld }

// BreakError is returned by Break when it frees nothing.
type BreakError struct {
	Lock  string
	Owner uint64 // the owner word Break was told
	Now   uint64 // the owner word found
	Err   error  // ErrOwnerChanged or ErrNotLocked
}

func (e *BreakError) Error() string {
	return fmt.Sprintf("%v: %s: asked to break owner %#x, found %#x; nothing was changed", e.Err, e.Lock, e.Owner, e.Now)
}

func (e *BreakError) Unwrap() error { return e.Err }
