package shmlock_test

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
)

// BenchmarkFastPath compares an uncontended Lock+Unlock with a naive CAS
// spinlock on a word of the same mapping, in one run: the cost of
// robustness on the fast path. (The peers across processes are in bench/.)
func BenchmarkFastPath(b *testing.B) {
	name := fmt.Sprintf("shmlock-bench-%d", os.Getpid())
	r, err := shm.Open(name, shm.Options{Size: 2 * shmlock.Size})
	if err != nil {
		b.Fatal(err)
	}
	defer shm.Remove(name)
	defer r.Close()
	mu, _ := shmlock.New(r, 0)
	line, _ := r.Line(shmlock.Size)
	spin := &line[0]
	b.Run("shmlock", func(b *testing.B) {
		for b.Loop() {
			mu.Lock()
			mu.Unlock()
		}
	})
	b.Run("naivespin", func(b *testing.B) {
		for b.Loop() {
			for !atomic.CompareAndSwapUint64(spin, 0, 1) {
			}
			atomic.StoreUint64(spin, 0)
		}
	})
}
