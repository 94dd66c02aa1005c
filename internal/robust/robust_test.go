//go:build linux

package robust_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/futex"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/robust"
)

func TestMain(m *testing.M) {
	proctest.Dispatch(map[string]func([]string) int{"hold": hold})
	os.Exit(m.Run())
}

// The test file: two lock lines. The child holds the word at 0; the word at
// 64 names another owner. Both are in the child's list.
const (
	held     = 0
	foreign  = 64
	size     = 4096
	gen      = 7 << 32 // a high half the kernel must leave alone
	otherTID = 12345
)

// mapFile maps the test file, shared.
func mapFile(t *testing.T, path string) []byte {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Truncate(size))
	b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func words(b []byte) (*uint64, *uint64) {
	return (*uint64)(unsafe.Pointer(&b[held])), (*uint64)(unsafe.Pointer(&b[foreign]))
}

// hold: args path, how. Maps the file into a robust arena, links both lock
// lines into a list, takes the word at 0, says so, and on a line from stdin
// dies as told.
func hold(args []string) int {
	f, err := os.OpenFile(args[0], os.O_RDWR, 0)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	m, err := robust.Map(int(f.Fd()), size)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	l, err := m.Find(func(int32) bool { return true }, true)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	l.Link(m.Entry(foreign))
	l.Link(m.Entry(held))
	w, _ := words(m.Bytes())
	if !atomic.CompareAndSwapUint64(w, 0, gen|uint64(l.TID())) {
		fmt.Println("lock word not free")
		return 1
	}
	fmt.Printf("held tid=%d\n", l.TID())
	proctest.Die(args[1])
	return 0
}

// Every kind of death of the holder process: the kernel marks its word
// FUTEX_OWNER_DIED (keeping FUTEX_WAITERS and the high half), wakes the
// waiter asleep on it, and leaves the word of another owner alone.
func TestKernelMarksAndWakes(t *testing.T) {
	for _, how := range proctest.Deaths {
		t.Run(how, func(t *testing.T) {
			proctest.New(t, 60*time.Second) // the watchdog
			path := filepath.Join(t.TempDir(), "region")
			w, other := words(mapFile(t, path))
			atomic.StoreUint64(other, gen|otherTID)

			cmd := proctest.Command("hold", path, how)
			stdin, err := cmd.StdinPipe()
			require.NoError(t, err)
			var out proctest.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			require.NoError(t, cmd.Start())
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			proctest.Eventually(t, 10*time.Second, "the child never held: "+out.String(), func() bool {
				return strings.Contains(out.String(), "held tid=")
			})
			tid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(out.String(), "tid=", 2)[1]))
			require.NoError(t, err)
			require.Equal(t, gen|uint64(tid), atomic.LoadUint64(w))

			// A waiter: the waiters bit, then a shared FUTEX_WAIT.
			require.True(t, atomic.CompareAndSwapUint64(w, gen|uint64(tid), gen|uint64(tid)|line.Waiters))
			woke := make(chan time.Time, 1)
			go func() {
				for atomic.LoadUint64(w) == gen|uint64(tid)|line.Waiters {
					futex.Wait(line.Low(w), uint32(tid)|line.Waiters, 20*time.Second)
				}
				woke <- time.Now()
			}()
			time.Sleep(50 * time.Millisecond) // let it fall asleep
			died := time.Now()
			fmt.Fprintln(stdin)
			if how == "sigkill" {
				cmd.Process.Kill()
			}
			select {
			case at := <-woke:
				t.Logf("%s: death → waiter awake in %v", how, at.Sub(died))
			case <-time.After(10 * time.Second):
				t.Fatalf("the waiter was not woken; word %#x", atomic.LoadUint64(w))
			}
			assert.Equal(t, uint64(gen|line.Waiters|line.OwnerDied), atomic.LoadUint64(w), "marked: TID cleared, OWNER_DIED set, WAITERS and the high half kept")
			assert.Equal(t, uint64(gen|otherTID), atomic.LoadUint64(other), "a word of another owner is left alone")
			if how == "exec" {
				assert.NoError(t, syscall.Kill(cmd.Process.Pid, 0), "exec: the process lives on, as another program")
			}
		})
	}
}

// A list's thread is never the main thread, even when the runtime would run
// the new goroutine there: that thread may carry the process's own robust
// list (glibc's). Threads are shared: a second mapping gets the same list.
func TestNotTheMainThread(t *testing.T) {
	path := filepath.Join(t.TempDir(), "region")
	mapFile(t, path)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	seen := map[int32]bool{}
	for range 20 {
		m, err := robust.Map(int(f.Fd()), size)
		require.NoError(t, err)
		defer m.Unmap()
		// A new list each time: every TID seen so far is refused.
		l, err := m.Find(func(tid int32) bool { return !seen[tid] }, true)
		require.NoError(t, err)
		seen[l.TID()] = true
		assert.NotEqual(t, int32(os.Getpid()), l.TID())
		assert.NoError(t, syscall.Tgkill(os.Getpid(), int(l.TID()), 0), "a live thread of this process")
		again, err := m.Find(func(tid int32) bool { return tid == l.TID() }, false)
		require.NoError(t, err)
		assert.Same(t, l, again)
	}
}

// takeID gives the namespace's next ID to a thread that ends at once: the
// IDs it returns increase (but for the wrap past pid_max), the next thread
// started gets a later one, and each of its threads is gone when the call
// returns. Only its own threads are looked for: the runtime starts threads of
// its own (a GC, a blocked syscall) while the test runs.
func TestTakeID(t *testing.T) {
	a, ok := robust.TakeID()
	if !ok {
		t.Skip("takeID is not implemented on this architecture")
	}
	b, ok := robust.TakeID()
	require.True(t, ok)
	assert.Greater(t, b, a, "IDs are handed out in turn (unless they wrapped)")
	pid := os.Getpid()
	taken := map[int32]bool{a: true, b: true}
	for range 1000 {
		id, ok := robust.TakeID()
		require.True(t, ok)
		taken[id] = true
		require.ErrorIs(t, syscall.Tgkill(pid, int(id), 0), syscall.ESRCH,
			"thread %d outlived the call", id)
	}
	d, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	for _, e := range d {
		tid, err := strconv.Atoi(e.Name())
		require.NoError(t, err)
		assert.False(t, taken[int32(tid)], "thread %d outlived the call", tid)
	}
}
