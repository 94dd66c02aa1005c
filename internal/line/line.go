// Package line is the layout of a lock's 64-byte cache line: its words, the
// bits of its owner word, and the owner word's low half. Every package that
// reads or writes a line takes the layout from here; what a word means to its
// owner (the Mutex, the placement tag, a seqlock) is documented there.
package line

import "unsafe"

// The words of a line, in 64-bit words.
//
//	word 0     owner word (below); the Mutex's
//	word 1     recoveries: bits 0..62 count the dead or broken holders whose
//	           lock was taken over; bit 63, Untold, the news of a takeover by
//	           Lock or TryLock, for the next Acquire
//	word 2     since: a hold a waiter saw (its gen in bits 32..63) and when
//	           (Unix milliseconds modulo 2^32 in bits 0..31)
//	word 3     tag: what is placed at the line (region.Plumbing.Place)
//	words 4-6  the object the lock protects (a seqlock's sequences)
//	word 7     wait: the Mutex's waiting policy (the prober lease, age classes)
const (
	Owner      = 0
	Recoveries = 1
	Since      = 2
	Tag        = 3
	Object     = 4
	Wait       = 7
	Words      = 8
)

// Untold is the news bit of the recoveries word.
const Untold = 1 << 63

// The owner word. Its low half is laid out as a Linux robust futex word (TID,
// then OWNER_DIED, then FUTEX_WAITERS) and changes at every release, so
// waiters sleep on it with a futex and the kernel's robust lists mark it.
//
//	30 bits - owner: 0 when free; an owner ID (shm.ModeProbe) or the thread
//	          ID of the holder's robust list (shm.ModeRobust)
//	1 bit   - owner died: a free word whose last hold did not end in a release
//	1 bit   - waiters: someone may sleep on the low half; a release wakes one
//	32 bits - gen: acquisitions so far, modulo 2^32; the fencing token
const (
	OwnerMask = 1<<30 - 1
	OwnerDied = 1 << 30
	Waiters   = 1 << 31
	LowHalf   = 1<<32 - 1
	GenOne    = 1 << 32
)

// Successor is the owner word that an acquisition by owner self installs in
// place of w: the next generation, self as owner, and of w's flags only those
// in keep. Every acquisition, recovery included, goes through it, so a CAS
// from an owner word seen earlier fails if anyone acquired since.
func Successor(w, self, keep uint64) uint64 { return w&^LowHalf + GenOne | self | w&keep }

// LowOffset is the offset, in a 64-bit owner word, of its low 32-bit half.
var LowOffset = func() uintptr {
	x := uint64(1)
	if *(*byte)(unsafe.Pointer(&x)) == 1 {
		return 0
	}
	return 4
}()

// Low returns the low half of the 64-bit word at w: the futex word.
func Low(w *uint64) *uint32 { return (*uint32)(unsafe.Add(unsafe.Pointer(w), LowOffset)) }
