//go:build amd64 && !race

package words

// Why a plain copy is enough on amd64, for a reader:
//   - the compiler: a copy or comparison of a length it does not know is a
//     call (runtime.memmove, runtime.memequal), and no memory operation
//     moves across a call, so it stays between the two atomic loads;
//   - the CPU: amd64 does not reorder a load with an earlier load (Intel SDM
//     vol. 3, 8.2.2; AMD APM vol. 2, 7.2), and memmove's string and vector
//     loads keep that order with the loads before and after them; so every
//     byte of the copy is read before the second load of the sequence, and
//     after the first.
//
// And for a writer: amd64 makes stores visible in program order (the same
// sections), and memmove's non-temporal stores, used only for copies far
// larger than a record, end with an SFENCE; so no byte it stores is seen
// before the store that made the sequence odd, or after the one that makes
// it even.

// Load copies src into dst (8*len(src) bytes), for a reader. Up to a line's
// worth of words the word loop costs no more than a call to memmove, so
// small copies keep it.
func Load(dst []byte, src []uint64) {
	if len(src) <= 8 {
		LoadWords(dst, src)
		return
	}
	copy(dst[:8*len(src)], bytesOf(src))
}

// LoadBytes copies the first len(dst) bytes of src into dst, for a reader.
func LoadBytes(dst []byte, src []uint64) { copy(dst, bytesOf(src)) }

// StoreBytes stores src at the start of dst, for a writer. The bytes of the
// last word past src are left as they were.
func StoreBytes(dst []uint64, src []byte) { copy(bytesOf(dst), src) }

// Store copies src into dst, for a writer.
func Store(dst, src []uint64) { copy(dst, src) }

// Equal reports whether the first len(b) bytes of w are b, for a reader.
func Equal(w []uint64, b []byte) bool { return string(bytesOf(w)[:len(b)]) == string(b) }
