//go:build linux

package futex

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const childEnv = "FUTEX_TEST_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		time.AfterFunc(60*time.Second, func() { os.Exit(3) })
		word, _ := mapWord(path)
		atomic.StoreUint32(word, 1) // "about to sleep"
		start := time.Now()
		Wait(word, 1, 20*time.Second)
		fmt.Println(time.Since(start))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func mapWord(path string) (*uint32, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Truncate(4096); err != nil {
		return nil, err
	}
	b, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return (*uint32)(unsafe.Pointer(&b[0])), nil
}

// A waiter in another process, asleep with a 20 s timeout, is woken by Wake
// in this one: the futex is shared, not private.
func TestWakeAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "word")
	word, err := mapWord(path)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	done := make(chan []byte, 1)
	go func() { out, _ := cmd.Output(); done <- out }()
	deadline := time.Now().Add(10 * time.Second)
	for atomic.LoadUint32(word) != 1 {
		require.True(t, time.Now().Before(deadline), "child never started")
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let it fall asleep
	atomic.StoreUint32(word, 2)
	Wake(word, 1)
	select {
	case out := <-done:
		t.Logf("child slept %s", out)
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the sleeper in the other process was not woken")
	}
}

// Wait returns at once when the word no longer holds the expected value, and
// after the timeout otherwise.
func TestWaitValueAndTimeout(t *testing.T) {
	var w uint32 = 5
	start := time.Now()
	Wait(&w, 4, 10*time.Second)
	require.Less(t, time.Since(start), 5*time.Second, "Wait slept although the value differed")
	requireSleeps(t, func(d time.Duration) { Wait(&w, 5, d) })
	Wait(&w, 5, 0)
	Wait(&w, 5, -time.Second)
}

// WakeMask wakes only the sleepers whose mask shares a bit with its own;
// Wake wakes any; a WaitMask's timeout is a duration from now.
func TestWakeMask(t *testing.T) {
	word, err := mapWord(filepath.Join(t.TempDir(), "word"))
	require.NoError(t, err)
	woke := make(chan uint32, 2)
	for _, mask := range []uint32{1 << 1, 1 << 2} {
		go func() {
			WaitMask(word, 0, 20*time.Second, mask)
			woke <- mask
		}()
	}
	time.Sleep(100 * time.Millisecond) // both asleep
	require.Zero(t, WakeMask(word, 1, 1<<3), "a mask no sleeper has woke one")
	require.Equal(t, 1, WakeMask(word, 2, 1<<2))
	require.Equal(t, uint32(1<<2), <-woke)
	require.Equal(t, 1, Wake(word, 2))
	require.Equal(t, uint32(1<<1), <-woke)

	requireSleeps(t, func(d time.Duration) { WaitMask(word, 0, d, 1) })
}

// requireSleeps checks that wait(d), on a word nobody wakes, sleeps for about
// d. A signal (the runtime's preemption, a profiler's) may end any one sleep
// early, so it waits out 50 ms in as many calls as that takes and bounds
// their number: a timeout taken as an absolute time, long past, returns at
// once and needs thousands.
func requireSleeps(t *testing.T, wait func(time.Duration)) {
	t.Helper()
	const total = 50 * time.Millisecond
	start := time.Now()
	calls := 0
	for left := total; left > 0; left = total - time.Since(start) {
		wait(left)
		calls++
	}
	require.Less(t, time.Since(start), 5*time.Second, "the timeout was taken as a time, not a duration")
	require.LessOrEqual(t, calls, 20, "the waits returned at once instead of sleeping")
}
