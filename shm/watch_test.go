//go:build linux

package shm

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/internal/proctest"
)

// attached starts a child attached to the region at path and returns it with
// its owner ID. The child is killed when the test ends.
func attached(t *testing.T, path string) (*proctest.Child, uint32) {
	return attachedAs(t, "attach", path)
}

// attachedAs starts a child in role ("attach" or "attach-detach") and returns
// it, its owner ID and its output so far.
func attachedAs(t *testing.T, role, path string) (*proctest.Child, uint32) {
	t.Helper()
	c := child(t, os.Args[0], nil, role, path)
	proctest.Eventually(t, 10*time.Second, "the child never attached", func() bool {
		return strings.Contains(c.Output(), "\n")
	})
	first, _, _ := strings.Cut(c.Output(), "\n")
	id, err := strconv.ParseUint(strings.TrimPrefix(first, "id="), 10, 32)
	require.NoError(t, err, c.Output())
	return c, uint32(id)
}

// counter returns a callback that counts its calls.
func counter() (*atomic.Int32, func()) {
	n := new(atomic.Int32)
	return n, func() { n.Add(1) }
}

// pidfds counts the pidfds that watches hold open: the nonblocking ones
// (os/exec keeps a blocking pidfd of its own for every child).
func pidfds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l != "anon_inode:[pidfd]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				if flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64); err == nil && flags&syscall.O_NONBLOCK != 0 {
					n++
				}
			}
		}
	}
	return n
}

// A watch fires when the watched process dies, for every caller sharing it,
// and never for a caller that stopped. The wait outlives its callers (the next
// waiter reuses it) and ends, closing its pidfd, when the process exits.
func TestWatchFiresOnExit(t *testing.T) {
	path := tempPath(t)
	r, err := Open(path, Options{Size: 64, Mode: ModeProbe})
	require.NoError(t, err)
	defer r.Close()
	a, idA := attached(t, path)
	b, idB := attached(t, path)

	n1, f1 := counter()
	n2, f2 := counter()
	nb, fb := counter()
	r.watchID(idA, f1)
	r.watchID(idA, f2)
	stopB := r.watchID(idB, fb)
	assert.Equal(t, 2, pidfds(t), "one pidfd per watched process, however many callers")

	stopB()
	assert.Equal(t, 2, pidfds(t), "the wait outlives its last caller")
	nb2, fb2 := counter()
	stopB = r.watchID(idB, fb2)
	assert.Equal(t, 2, pidfds(t), "and serves the next one")
	stopB()
	b.Kill()
	// Killed, not reaped: the zombie stage is when the pidfd fires.
	syscall.Kill(a.Pid(), syscall.SIGKILL)
	proctest.Eventually(t, 10*time.Second, "the watch did not fire when its process died", func() bool {
		return n1.Load() == 1 && n2.Load() == 1
	})
	a.Kill()
	time.Sleep(100 * time.Millisecond)
	assert.EqualValues(t, 1, n1.Load(), "fires once")
	assert.Zero(t, nb.Load()+nb2.Load(), "a stopped watch never fires")
	proctest.Eventually(t, 10*time.Second, "pidfds left open", func() bool { return pidfds(t) == 0 })
}

// f never starts after stop returns, even for a process known gone, whose f
// is started at once (and so may start before stop is called: that is not
// counted).
func TestWatchStopBeforeStart(t *testing.T) {
	path := tempPath(t)
	r, err := Open(path, Options{Size: 64, Mode: ModeProbe})
	require.NoError(t, err)
	defer r.Close()
	_, id := attached(t, path)
	stale := makeID(uint32(slotOf(id)), incarnationOf(id)-1)
	var late atomic.Int32
	for range 100 {
		var stopped atomic.Bool
		stop := r.watchID(stale, func() {
			if stopped.Load() {
				late.Add(1)
			}
		})
		stop()
		stopped.Store(true)
	}
	time.Sleep(100 * time.Millisecond)
	assert.Zero(t, late.Load(), "f started after stop returned")
}

// A slot claimed again while its old attachment's process lives on (it
// detached): the next Watch of the new attachment ends the old wait and tells
// its callers; a wait nobody needs any more is dropped when its last caller
// stops.
func TestWatchSlotClaimedAgain(t *testing.T) {
	// open returns a region in which we hold slot 1, so that children
	// take turns in slot 2.
	open := func(t *testing.T) (*Region, string) {
		path := tempPath(t)
		r, err := Open(path, Options{Size: 64, Slots: 2, Mode: ModeProbe})
		require.NoError(t, err)
		t.Cleanup(func() { r.Close() })
		return r, path
	}
	t.Run("replaced by the next Watch", func(t *testing.T) {
		r, path := open(t)
		nA, fA := counter()
		outA, idA := attachedAs(t, "attach-detach", path)
		r.watchID(idA, fA)
		require.Equal(t, 1, pidfds(t))
		proctest.Eventually(t, 10*time.Second, "A never detached", func() bool { return strings.Contains(outA.Output(), "detached") })
		_, idB := attached(t, path)
		require.Equal(t, slotOf(idA), slotOf(idB), "B claims the slot A left")
		nB, fB := counter()
		defer r.watchID(idB, fB)()
		proctest.Eventually(t, 10*time.Second, "A's callers were not told A is gone", func() bool { return nA.Load() == 1 })
		assert.Equal(t, 1, pidfds(t), "A's pidfd closed, B's opened")
		time.Sleep(100 * time.Millisecond)
		assert.Zero(t, nB.Load(), "B reported gone while it lives")
	})
	t.Run("dropped at the last stop", func(t *testing.T) {
		r, path := open(t)
		nA, fA := counter()
		outA, idA := attachedAs(t, "attach-detach", path)
		stopA := r.watchID(idA, fA)
		require.Equal(t, 1, pidfds(t))
		proctest.Eventually(t, 10*time.Second, "A never detached", func() bool { return strings.Contains(outA.Output(), "detached") })
		_, idB := attached(t, path)
		require.Equal(t, slotOf(idA), slotOf(idB))
		stopA()
		proctest.Eventually(t, 10*time.Second, "a wait for an attachment gone from its slot stayed open", func() bool { return pidfds(t) == 0 })
		assert.Zero(t, nA.Load(), "stopped")
	})
}

// A stale ID (from a lock word that a dead attachment left held) is reported
// gone at once, and leaves alone the watch of whoever holds its slot now.
func TestWatchStaleIDSparesTheLiving(t *testing.T) {
	path := tempPath(t)
	r, err := Open(path, Options{Size: 64, Slots: 2, Mode: ModeProbe})
	require.NoError(t, err)
	defer r.Close()
	a, idA := attached(t, path)
	a.Kill()
	_, idB := attached(t, path)
	require.Equal(t, slotOf(idA), slotOf(idB))
	nB, fB := counter()
	defer r.watchID(idB, fB)()
	require.Equal(t, 1, pidfds(t))
	nA, fA := counter()
	defer r.watchID(idA, fA)()
	proctest.Eventually(t, 5*time.Second, "A was not reported gone", func() bool { return nA.Load() == 1 })
	time.Sleep(100 * time.Millisecond)
	assert.Zero(t, nB.Load(), "B's waiters told B died while B lives")
	assert.Equal(t, 1, pidfds(t), "B's wait was closed")
}

// A process known gone is reported at once; our own ID, and a holder in
// another PID namespace (whose pid means nothing here), are never watched.
func TestWatchGoneSelfAndForeign(t *testing.T) {
	path := tempPath(t)
	r, err := Open(path, Options{Size: 64, Mode: ModeProbe})
	require.NoError(t, err)
	defer r.Close()
	c, id := attached(t, path)

	// The child's slot record as seen from another PID namespace: the same
	// pid, another namespace inode. Set up in a second slot of our own.
	foreign, err := Open(path, Options{})
	require.NoError(t, err)
	defer foreign.Close()
	e := r.entry(slotOf(foreign.ownerID()))
	atomic.StoreInt32(e.pid, int32(c.Pid()))
	atomic.StoreUint64(e.pidns, r.self.NS+1)

	nSelf, fSelf := counter()
	nForeign, fForeign := counter()
	r.watchID(r.ownerID(), fSelf)
	r.watchID(foreign.ownerID(), fForeign)
	assert.Zero(t, pidfds(t), "nothing to watch")

	nGone, fGone := counter()
	stale := makeID(uint32(slotOf(id)), incarnationOf(id)-1)
	r.watchID(stale, fGone)
	proctest.Eventually(t, 10*time.Second, "a reclaimed slot was not reported gone", func() bool { return nGone.Load() == 1 })

	c.Kill()
	time.Sleep(200 * time.Millisecond)
	assert.Zero(t, nSelf.Load())
	assert.Zero(t, nForeign.Load(), "a pid from another namespace was watched")
}

// Close ends every watch: no callback afterwards, no descriptor left.
func TestWatchClose(t *testing.T) {
	path := tempPath(t)
	r, err := Open(path, Options{Size: 64, Mode: ModeProbe})
	require.NoError(t, err)
	c, id := attached(t, path)
	n, f := counter()
	r.watchID(id, f)
	require.Equal(t, 1, pidfds(t))
	require.NoError(t, r.Close())
	proctest.Eventually(t, 10*time.Second, "Close left pidfds open", func() bool { return pidfds(t) == 0 })
	stop := r.watchID(id, f)
	stop()
	c.Kill()
	time.Sleep(200 * time.Millisecond)
	assert.Zero(t, n.Load())
}
