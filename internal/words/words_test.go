package words

import (
	"bytes"
	"testing"
)

// Every length, at the start of a word array: what Load and LoadBytes copy
// out is what StoreBytes stored, Equal agrees, and the words past the stored
// bytes are untouched. Both the plain and the atomic forms are checked here,
// whichever the build uses for the exported names.
func TestRoundTrip(t *testing.T) {
	for n := 0; n <= 70; n++ {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i*7 + 1)
		}
		for _, form := range []struct {
			name  string
			store func([]uint64, []byte)
			load  func([]byte, []uint64)
			equal func([]uint64, []byte) bool
		}{
			{"exported", StoreBytes, LoadBytes, Equal},
			{"atomic", storeBytesAtomic, loadBytesAtomic, equalAtomic},
		} {
			w := make([]uint64, 10)
			for i := range w {
				w[i] = ^uint64(0)
			}
			form.store(w, src)
			got := make([]byte, n)
			form.load(got, w)
			if !bytes.Equal(got, src) {
				t.Fatalf("%s, %d bytes: stored %x, loaded %x", form.name, n, src, got)
			}
			if !form.equal(w, src) {
				t.Fatalf("%s, %d bytes: Equal is false for what was stored", form.name, n)
			}
			if n > 0 {
				src[n-1]++
				if form.equal(w, src) {
					t.Fatalf("%s, %d bytes: Equal is true for other bytes", form.name, n)
				}
				src[n-1]--
			}
			for i := (n + 7) / 8; i < len(w); i++ {
				if w[i] != ^uint64(0) {
					t.Fatalf("%s, %d bytes: word %d past them changed", form.name, n, i)
				}
			}
		}
	}
	w := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	b := make([]byte, 80)
	Load(b, w)
	c := make([]byte, 81)
	LoadWords(c[1:], w) // unaligned
	if !bytes.Equal(b, c[1:]) {
		t.Fatal("Load and an unaligned LoadWords differ")
	}
	d := make([]uint64, 10)
	Copy(d, w)
	if d[9] != 10 {
		t.Fatal("Copy")
	}
	e := make([]uint64, 10)
	Store(e[1:4], w[:3])
	if e[0] != 0 || e[1] != 1 || e[3] != 3 || e[4] != 0 {
		t.Fatalf("Store: %v", e)
	}
}
