//go:build !amd64 || race

package words

import "sync/atomic"

// Elsewhere (arm64 reorders plain loads past a later load-acquire, and
// plain stores before an earlier store-release) and under the race
// detector, every word moves by an atomic load or store.

// Load copies src into dst (8*len(src) bytes), for a reader.
func Load(dst []byte, src []uint64) { LoadWords(dst, src) }

// LoadBytes copies the first len(dst) bytes of src into dst, for a reader.
func LoadBytes(dst []byte, src []uint64) { loadBytesAtomic(dst, src) }

// StoreBytes stores src at the start of dst, for a writer. The bytes of the
// last word past src may be zeroed.
func StoreBytes(dst []uint64, src []byte) { storeBytesAtomic(dst, src) }

// Store copies src into dst, for a writer.
func Store(dst, src []uint64) {
	for i := range src {
		atomic.StoreUint64(&dst[i], src[i])
	}
}

// Equal reports whether the first len(b) bytes of w are b, for a reader.
func Equal(w []uint64, b []byte) bool { return equalAtomic(w, b) }
