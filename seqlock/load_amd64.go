//go:build amd64 && !race

package seqlock

import "unsafe"

// load copies src into dst (8*len(src) bytes) for a reader, who checks the
// sequence before and after it: a copy between two atomic loads of the
// sequence (or of the copy's sequence, for a Record) must read none of its
// bytes after the second, or it could accept bytes a writer stored after
// that load.
//
// Why a plain copy is enough here:
//   - the compiler: a copy of a length it does not know is a call to
//     runtime.memmove, and no memory operation moves across a call, so the
//     copy stays between the two atomic loads;
//   - the CPU: amd64 does not reorder a load with an earlier load (Intel SDM
//     vol. 3, 8.2.2; AMD APM vol. 2, 7.2), and memmove's string and vector
//     loads keep that order with the loads before and after them; so every
//     byte of the copy is read before the second load of the sequence, and
//     after the first.
//
// The writer still stores word by word with atomic stores (an XCHG each on
// amd64), so no store of its data is seen before its opening store of the
// sequence. Elsewhere (arm64 reorders plain loads past a later load-acquire)
// and under the race detector, load is loadWords.
//
// Up to a line's worth of words, the word loop costs no more than a call to
// memmove (BenchmarkRead), so small records keep it.
func load(dst []byte, src []uint64) {
	if len(src) <= 8 {
		loadWords(dst, src)
		return
	}
	copy(dst[:8*len(src)], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(src))), 8*len(src)))
}
