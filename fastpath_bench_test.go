package shmlock_test

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
)

// BenchmarkFastPath compares an uncontended Lock+Unlock, in each mode, with a
// naive CAS spinlock on a word of the same mapping, in one run: the cost of
// robustness on the fast path. (The peers across processes are in bench/.)
func BenchmarkFastPath(b *testing.B) {
	var mus []*shmlock.Mutex
	var spin *uint64
	for _, mode := range []shm.Mode{shm.ModeProbe, shm.ModeRobust} {
		if mode == shm.ModeRobust && shm.DefaultMode() != shm.ModeRobust {
			continue // not on this system
		}
		name := fmt.Sprintf("shmlock-bench-%d-%v", os.Getpid(), mode)
		r, err := shm.Open(name, shm.Options{Size: 2 * shmlock.Size, Mode: mode})
		if err != nil {
			b.Fatal(err)
		}
		defer shm.Remove(name)
		defer r.Close()
		mu, _ := shmlock.New(r, 0)
		mus = append(mus, mu)
		line, _ := r.Line(shmlock.Size)
		spin = &line[0]
	}
	for i, mu := range mus {
		b.Run("shmlock-"+[]string{"probe", "robust"}[i], func(b *testing.B) {
			for b.Loop() {
				mu.Lock()
				mu.Unlock()
			}
		})
	}
	b.Run("naivespin", func(b *testing.B) {
		for b.Loop() {
			for !atomic.CompareAndSwapUint64(spin, 0, 1) {
			}
			atomic.StoreUint64(spin, 0)
		}
	})
}
