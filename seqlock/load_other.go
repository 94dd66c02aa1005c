//go:build !amd64 || race

package seqlock

// load is loadWords: see load_amd64.go for why amd64 needs no more than a
// plain copy, and what the others need.
func load(dst []byte, src []uint64) { loadWords(dst, src) }
