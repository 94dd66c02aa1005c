//go:build !linux

package shm

// Robust futex lists are Linux's: elsewhere ModeRobust is refused (ErrMode),
// and a robust region can only be looked at (OpenReadOnly).
type robustLists struct{}

func robustAvailable() bool { return false }

func (r *Region) mapRobust(int) error { return ErrMode }

func (r *Region) startRobust(map[uint32]bool) error { return ErrMode }

func (r *Region) linkRobust(off int) (uint32, error) { return 0, ErrMode }

func (r *Region) ownTID(uint32) bool { return false }

func (r *Region) closeRobust() {}

func (r *Region) startRetiring() {}

func (r *Region) retireClaimed(int) {}
