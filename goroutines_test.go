//go:build linux

package shmlock_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// Goroutines of one process share one Mutex, and a second Mutex value for the
// same line, through every acquisition and release path, while child
// processes contend (so sleepers, the waiters bit and slow paths occur).
// plain is a non-atomic counter: under -race, two holders at once, or an
// order the detector cannot see (Mutex.held, see race_on.go), is reported.
func TestGoroutinesShareMutex(t *testing.T) {
	h := newHarness(t, 60*time.Second)
	m := h.mu
	m2, err := shmlock.New(h.r, offMutex)
	require.NoError(t, err)

	var plain int
	var inside atomic.Int32
	var bad atomic.Int32
	crit := func() {
		if inside.Add(1) != 1 {
			bad.Add(1)
		}
		plain++
		inside.Add(-1)
	}
	kids := []*child{h.spawn("increment", "0", "3000"), h.spawn("increment", "1", "3000")}

	const iters = 3000
	var wg sync.WaitGroup
	run := func(f func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				f(i)
			}
		}()
	}
	run(func(int) { m.Lock(); crit(); m.Unlock() })
	run(func(int) {
		if m.TryLock() {
			crit()
			m.Unlock()
		}
	})
	run(func(int) {
		if g, ok := m.TryAcquire(); ok {
			crit()
			g.Commit()
			g.Release()
		}
	})
	run(func(int) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if g, err := m.Acquire(ctx); err == nil {
			crit()
			g.Commit()
			g.Release()
		}
	})
	run(func(int) { m2.Lock(); crit(); m.Unlock() }) // taken via m2, released via m
	run(func(int) { m.Lock(); crit(); m2.Unlock() }) // taken via m, released via m2
	// Lock in one goroutine, Unlock in another (handoff over a channel).
	hand := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < iters; i++ {
			m.Lock()
			crit()
			hand <- struct{}{}
		}
		close(hand)
	}()
	go func() {
		defer wg.Done()
		for range hand {
			m.Unlock()
		}
	}()
	wg.Wait()
	for _, k := range kids {
		k.Wait(t, 30*time.Second)
	}
	require.Zero(t, bad.Load(), "two holders inside at once")
	require.Zero(t, h.load(offViolation), "cross-process violation")
	require.EqualValues(t, 6000, h.load(offCounter))
	require.False(t, m.Inspect().Held)
	require.Positive(t, plain)
}

// Two goroutines of one process write one SeqLock (Acquire, Unlock inside):
// clean under -race.
func TestGoroutinesShareSeqLock(t *testing.T) {
	path := fmt.Sprintf("%s/shmlock-review-seq-%d", shm.Dir, os.Getpid())
	os.Remove(path)
	r, err := shm.Open(path, shm.Options{Size: 4096, Slots: 8})
	require.NoError(t, err)
	defer os.Remove(path)
	defer r.Close()
	s, err := seqlock.NewSeqLock(r, 0, 64)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for range 500 {
				w, err := s.Write(context.Background())
				if err != nil {
					panic(err)
				}
				w.Store(buf)
				w.Commit()
				w.Release()
			}
		}()
	}
	wg.Wait()
}
