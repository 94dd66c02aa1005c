package shm

import "fmt"

// Mode is the protocol by which the locks of a region learn that a holder
// died. A region is created in one mode and keeps it for its whole life
// (the header records it), so that every process follows one protocol: a
// process that asks to open it in the other mode is refused with ErrMode,
// never allowed to mix two ways of reading one lock word.
type Mode uint32

const (
	// ModeAuto, the zero value: open a region in the mode it was created
	// in, and create one in ModeRobust where the system supports it,
	// ModeProbe elsewhere.
	ModeAuto Mode = iota
	// ModeProbe: a lock word names its holder by its owner ID (a slot of
	// the process table); waiters probe the holder's liveness lock and
	// process, and take the lock over from a holder found dead.
	ModeProbe
	// ModeRobust (Linux): a lock word follows the kernel's robust futex
	// ABI. It names its holder by the thread ID of a dedicated thread of
	// the holder's process, whose robust list links every lock the
	// process may hold, so that when the process dies the kernel itself
	// marks each lock it held (FUTEX_OWNER_DIED) and wakes a waiter. The
	// probe stays behind it as a safety net.
	ModeRobust
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeProbe:
		return "probe"
	case ModeRobust:
		return "robust"
	}
	return fmt.Sprintf("Mode(%d)", uint32(m))
}

// DefaultMode is the mode in which Open creates a region when Options.Mode
// is ModeAuto: ModeRobust if this system supports robust futex lists,
// ModeProbe otherwise.
func DefaultMode() Mode {
	if robustAvailable() {
		return ModeRobust
	}
	return ModeProbe
}
