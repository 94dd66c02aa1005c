// Package line knows the layout of a lock's cache line that more than one
// package reads.
package line

import "unsafe"

// LowHalf is the offset, in a 64-bit owner word, of its low 32-bit half: the
// futex word, which waiters sleep on and the kernel's robust lists mark.
var LowHalf = func() uintptr {
	x := uint64(1)
	if *(*byte)(unsafe.Pointer(&x)) == 1 {
		return 0
	}
	return 4
}()

// Low returns the low half of the 64-bit word at w.
func Low(w *uint64) *uint32 { return (*uint32)(unsafe.Add(unsafe.Pointer(w), LowHalf)) }
