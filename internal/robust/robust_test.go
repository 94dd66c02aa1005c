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
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/robust"
	"github.com/shmlock/shmlock/shm"
)

func TestMain(m *testing.M) {
	proctest.Dispatch(map[string]func([]string) int{"hold": hold})
	os.Exit(m.Run())
}

// The test region: two lock lines. The child holds the word at 0; the word
// at 64 names another owner. Both are in the child's list.
const (
	held     = 0
	foreign  = 64
	gen      = 7 << 32 // a high half the kernel must leave alone
	otherTID = 12345
)

func words(r *shm.Region) (*uint64, *uint64) {
	a, _ := r.Line(held)
	b, _ := r.Line(foreign)
	return &a[0], &b[0]
}

// low returns the 32-bit futex word of a 64-bit lock word (little endian).
func low(w *uint64) *uint32 { return (*uint32)(unsafe.Pointer(w)) }

// hold: args path, how. Registers a list whose entries lie in a private
// shadow of the region, links both lock lines, takes the word at 0, says so,
// and on a line from stdin dies as told.
func hold(args []string) int {
	r, err := shm.Open(args[0], shm.Options{})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	data, _ := r.Bytes(0, r.Size())
	shadow, err := unix.Mmap(-1, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	offset := int64(uintptr(unsafe.Pointer(&data[0])) - uintptr(unsafe.Pointer(&shadow[0])))
	l, err := robust.New(offset)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	l.Link(unsafe.Pointer(&shadow[foreign]))
	l.Link(unsafe.Pointer(&shadow[held]))
	w, _ := words(r)
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
			r, err := shm.Open(path, shm.Options{Size: 4096})
			require.NoError(t, err)
			defer r.Close()
			w, other := words(r)
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
			require.True(t, atomic.CompareAndSwapUint64(w, gen|uint64(tid), gen|uint64(tid)|robust.Waiters))
			woke := make(chan time.Time, 1)
			go func() {
				for atomic.LoadUint64(w) == gen|uint64(tid)|robust.Waiters {
					futex.Wait(low(w), uint32(tid)|robust.Waiters, 20*time.Second)
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
			assert.Equal(t, uint64(gen|robust.Waiters|robust.OwnerDied), atomic.LoadUint64(w), "marked: TID cleared, OWNER_DIED set, WAITERS and the high half kept")
			assert.Equal(t, uint64(gen|otherTID), atomic.LoadUint64(other), "a word of another owner is left alone")
			if how == "exec" {
				assert.NoError(t, syscall.Kill(cmd.Process.Pid, 0), "exec: the process lives on, as another program")
			}
		})
	}
}

// A list's thread is never the main thread, even when the runtime would run
// the new goroutine there: that thread may carry the process's own robust
// list (glibc's), and Go cannot end it at Close.
func TestNotTheMainThread(t *testing.T) {
	var ls []*robust.List
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range 20 {
		l, err := robust.New(0)
		require.NoError(t, err)
		ls = append(ls, l)
		assert.NotEqual(t, int32(os.Getpid()), l.TID())
		assert.NoError(t, syscall.Tgkill(os.Getpid(), int(l.TID()), 0), "a live thread of this process")
	}
}
