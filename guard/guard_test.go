package guard_test

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/shmlock/shmlock/guard"
)

// lock records how it was released.
type lock struct{ releases []bool }

func (l *lock) Release(fence uint64, committed bool) { l.releases = append(l.releases, committed) }

func TestReleaseOnce(t *testing.T) {
	l := &lock{}
	g := guard.New(l, true, 42)
	assert.True(t, g.Recovered())
	assert.EqualValues(t, 42, g.Fence())
	g.Commit()
	g.Release()
	g.Release()
	assert.Equal(t, []bool{true}, l.releases, "one release, committed")
	assert.True(t, g.Released())
}

func TestEarlyReturnAborts(t *testing.T) {
	l := &lock{}
	func() {
		g := guard.New(l, false, 1)
		defer g.Release()
		if true {
			return // an error path that forgot nothing but Commit
		}
		g.Commit()
	}()
	assert.Equal(t, []bool{false}, l.releases)
}

func TestPanicAbortsAndPropagates(t *testing.T) {
	l := &lock{}
	var got any
	func() {
		defer func() { got = recover() }()
		g := guard.New(l, false, 1)
		defer g.Release()
		panic("boom")
	}()
	assert.Equal(t, "boom", got, "the original panic value reaches the caller")
	assert.Equal(t, []bool{false}, l.releases)
}

// runtime.Goexit (t.FailNow) is not a panic: a recover-based guard would see
// nothing and treat it as success. Without Commit it is an abort here.
func TestGoexitAborts(t *testing.T) {
	l := &lock{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		g := guard.New(l, false, 1)
		defer g.Release()
		runtime.Goexit()
	}()
	wg.Wait()
	assert.Equal(t, []bool{false}, l.releases)
}

// The zero Guard, what a failed Acquire returns beside its error, holds
// nothing: releasing it does nothing.
func TestZeroGuard(t *testing.T) {
	var g guard.Guard
	g.Release()
	assert.False(t, g.Released())
}

// Returning a Guard costs no allocation.
func TestNewDoesNotAllocate(t *testing.T) {
	l := &lock{releases: make([]bool, 0, 1000)}
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		g := guard.New(l, false, 1)
		defer g.Release()
		g.Commit()
	}))
}
