package line

import "testing"

// Low is the half the futex and the kernel's robust lists use: the owner and
// its flags, never the generation.
func TestLow(t *testing.T) {
	w := uint64(7)<<32 | Waiters | 5
	if got := *Low(&w); got != Waiters|5 {
		t.Fatalf("low half of %#x = %#x, want %#x", w, got, uint32(Waiters|5))
	}
}

// Successor moves to the next generation, names the new owner and keeps only
// the flags asked for.
func TestSuccessor(t *testing.T) {
	w := uint64(9)<<32 | OwnerDied | Waiters | 3
	if got, want := Successor(w, 4, Waiters), uint64(10)<<32|Waiters|4; got != want {
		t.Errorf("Successor(%#x, 4, Waiters) = %#x, want %#x", w, got, want)
	}
	if got, want := Successor(w, 4, 0), uint64(10)<<32|4; got != want {
		t.Errorf("Successor(%#x, 4, 0) = %#x, want %#x", w, got, want)
	}
	if got := Successor(uint64(LowHalf)<<32, 1, 0); got != 1 {
		t.Errorf("the generation wraps: got %#x, want 0x1", got)
	}
}
