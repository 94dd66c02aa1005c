// Package words copies bytes in and out of shared memory for the readers and
// writers of a sequence lock: a reader copies between two loads of a
// sequence and keeps the copy only if they are equal; a writer stores
// between making the sequence odd and making it even again.
//
// The copy must stay between the sequence's loads or stores, in the
// program and in the CPU. On amd64 a plain copy does (see Load), and it is
// what these functions are there, without the race detector; elsewhere, and
// under it, they move a word at a time with atomic loads and stores.
//
// Shared memory is given as words ([]uint64), so that every atomic access is
// aligned.
package words

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// LoadWords copies src into dst (8*len(src) bytes) with one atomic load a
// word.
func LoadWords(dst []byte, src []uint64) {
	p := unsafe.Pointer(unsafe.SliceData(dst))
	if uintptr(p)%8 == 0 {
		// The usual case (make and append align to 8): word stores
		// straight into dst, without a byte shuffle or bounds checks.
		d := unsafe.Slice((*uint64)(p), len(src))
		for i := range d {
			d[i] = atomic.LoadUint64(&src[i])
		}
		return
	}
	for i := range src {
		binary.NativeEndian.PutUint64(dst[8*i:], atomic.LoadUint64(&src[i]))
	}
}

// Copy copies the words of src to dst, for a writer that starts from what a
// reader may be reading.
func Copy(dst, src []uint64) {
	for i := range src {
		atomic.StoreUint64(&dst[i], atomic.LoadUint64(&src[i]))
	}
}

// bytesOf is the bytes of w.
func bytesOf(w []uint64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(w))), 8*len(w))
}

// loadBytesAtomic copies the first len(dst) bytes of src into dst.
func loadBytesAtomic(dst []byte, src []uint64) {
	n := len(dst) / 8
	LoadWords(dst[:8*n], src[:n])
	if t := len(dst) % 8; t > 0 {
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], atomic.LoadUint64(&src[n]))
		copy(dst[8*n:], b[:t])
	}
}

// storeBytesAtomic stores src at the start of dst, the rest of its last word
// zero.
func storeBytesAtomic(dst []uint64, src []byte) {
	n := len(src) / 8
	for i := range n {
		atomic.StoreUint64(&dst[i], binary.NativeEndian.Uint64(src[8*i:]))
	}
	if t := len(src) % 8; t > 0 {
		var b [8]byte
		copy(b[:], src[8*n:])
		atomic.StoreUint64(&dst[n], binary.NativeEndian.Uint64(b[:]))
	}
}

// equalAtomic reports whether the first len(b) bytes of w are b.
func equalAtomic(w []uint64, b []byte) bool {
	n := len(b) / 8
	for i := range n {
		if atomic.LoadUint64(&w[i]) != binary.NativeEndian.Uint64(b[8*i:]) {
			return false
		}
	}
	if t := len(b) % 8; t > 0 {
		var x [8]byte
		binary.NativeEndian.PutUint64(x[:], atomic.LoadUint64(&w[n]))
		return string(x[:t]) == string(b[8*n:])
	}
	return true
}
