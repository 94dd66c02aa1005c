package shmlock_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/shm"
)

// BenchmarkFastPath compares an uncontended Lock+Unlock, in each mode, with a
// naive CAS spinlock on a word of the same mapping, in one run: the cost of
// robustness on the fast path. The told path (Acquire+Commit+Release) runs
// beside it, once inline and once as a caller writes it, in a function that
// defers the release; Lock+Unlock is written so too ("-defer"), so that each
// pair differs only in what the lock does. (The peers across processes are
// in bench/.)
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
		line, _ := region.Of(r).Line(shmlock.Size)
		spin = &line[0]
	}
	for i, mu := range mus {
		mode := []string{"probe", "robust"}[i]
		b.Run("shmlock-"+mode, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				mu.Lock()
				mu.Unlock()
			}
		})
		b.Run("shmlock-"+mode+"-defer", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				lockUnlock(mu)
			}
		})
		b.Run("shmlock-"+mode+"-acquire", func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			for b.Loop() {
				g, err := mu.Acquire(ctx)
				if err != nil {
					b.Fatal(err)
				}
				g.Commit()
				g.Release()
			}
		})
		b.Run("shmlock-"+mode+"-acquire-defer", func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			for b.Loop() {
				acquireRelease(ctx, mu)
			}
		})
	}
	b.Run("naivespin", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for !atomic.CompareAndSwapUint64(spin, 0, 1) {
			}
			atomic.StoreUint64(spin, 0)
		}
	})
}

// lockUnlock is the bare path as a caller writes it.
//
//go:noinline
func lockUnlock(mu *shmlock.Mutex) {
	mu.Lock()
	defer mu.Unlock()
}

// acquireRelease is the told path as a caller writes it.
//
//go:noinline
func acquireRelease(ctx context.Context, mu *shmlock.Mutex) {
	g, err := mu.Acquire(ctx)
	if err != nil {
		panic(err)
	}
	defer g.Release()
	g.Commit()
}
