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

func (l *lock) Release(committed bool) { l.releases = append(l.releases, committed) }

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
