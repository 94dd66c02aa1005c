//go:build linux

package shmlock_test

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/owner"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/shm"
)

// The process-table entry layout of shm/layout.go, which these tests write
// through the file as an outside corruption would.
const (
	entryBytes     = 128
	entIncarnation = 0
	entPID         = 4
	entStart       = 8
	entPIDNS       = 16
	entTimeNS      = 32
)

// recordingSys passes the probe's system calls through and records them.
type recordingSys struct {
	real  owner.Sys
	mu    sync.Mutex
	kills []int
}

func (s *recordingSys) Kill0(pid int) error {
	s.mu.Lock()
	s.kills = append(s.kills, pid)
	s.mu.Unlock()
	return s.real.Kill0(pid)
}

func (s *recordingSys) Stat(pid int) (owner.Stat, error) { return s.real.Stat(pid) }

// recordKills installs a recordingSys and, at the end of the test, fails it
// if kill was ever called with a pid that is not a valid process ID.
func recordKills(t *testing.T) *recordingSys {
	rec := &recordingSys{}
	rec.real = owner.SetSys(rec)
	t.Cleanup(func() {
		owner.SetSys(rec.real)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, pid := range rec.kills {
			assert.True(t, pid >= 1 && pid <= int(owner.PIDMax()), "kill(%d, 0) was called", pid)
		}
	})
	return rec
}

// setEntry writes slot's process-table entry through the file, with this
// process's time namespace.
func (h *harness) setEntry(slot int, incarnation uint32, pid int32, start, pidns uint64) {
	f, err := os.OpenFile(h.path, os.O_RDWR, 0)
	require.NoError(h.t, err)
	defer f.Close()
	var e [40]byte
	ne := binary.NativeEndian
	ne.PutUint64(e[entTimeNS:], owner.Self().TimeNS)
	ne.PutUint32(e[entIncarnation:], incarnation)
	ne.PutUint32(e[entPID:], uint32(pid))
	ne.PutUint64(e[entStart:], start)
	ne.PutUint64(e[entPIDNS:], pidns)
	_, err = f.WriteAt(e[:], int64(slot*entryBytes))
	require.NoError(h.t, err)
}

// holdSlotLock takes slot's liveness lock on a descriptor of its own, as a
// descriptor that escaped to another process would hold it, and returns the
// function that drops it.
func (h *harness) holdSlotLock(slot int) func() {
	f, err := os.OpenFile(h.path, os.O_RDWR, 0)
	require.NoError(h.t, err)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: int64(slot * entryBytes), Len: 1}
	require.NoError(h.t, unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk))
	return func() { f.Close() }
}

// ownerWord builds an owner word (see mutex.go) naming slot and incarnation
// (an owner ID, see shm/layout.go: the slot in bits 0..9).
func ownerWord(gen uint32, slot int, incarnation uint32) uint64 {
	return uint64(gen)<<32 | uint64(incarnation)<<10 | uint64(slot)
}

func (h *harness) setOwner(w uint64) { atomic.StoreUint64(h.word(offMutex), w) }

func (h *harness) acquire(limit time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	g, err := h.mu.Acquire(ctx)
	if err != nil {
		return false, err
	}
	defer g.Release()
	return g.Recovered(), nil
}

func startTime(t *testing.T, pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	require.NoError(t, err)
	st, err := owner.ParseStat(b)
	require.NoError(t, err)
	return st.Start
}

// An owner whose PID now belongs to another, live process, with its liveness
// lock free, is dead (PID reuse). With the lock kept by an escaped descriptor
// it is not robbed until kill says ESRCH.
func TestPIDReuse(t *testing.T) {
	h := newModeHarness(t, 60*time.Second, shm.ModeProbe)
	recordKills(t)
	sleeper := exec.Command("sleep", "60")
	require.NoError(t, sleeper.Start())
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	pid := int32(sleeper.Process.Pid)
	start := startTime(t, int(pid))
	ns := owner.Self().NS
	const slot = 60

	// The unrelated process has a different start time, liveness lock free.
	h.setEntry(slot, 7, pid, start+1, ns)
	h.setOwner(ownerWord(10, slot, 7))
	rec, err := h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, rec)

	// Liveness lock held (a descriptor escaped): /proc readings, a start
	// time included, never overrule the kernel's lock (they mislead across
	// time namespaces, for one). Not robbed; reported unverifiable, with
	// the administrator's way out.
	drop := h.holdSlotLock(slot)
	h.setOwner(ownerWord(20, slot, 7))
	_, err = h.acquire(300 * time.Millisecond)
	var he *shmlock.HeldError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, shm.Unverifiable, he.Holder.State)
	assert.Equal(t, pid, he.Holder.PID)
	assert.Contains(t, he.Advice(), "Mutex.Break(")
	assert.Contains(t, he.Advice(), "shmlock break "+h.path+" 0 --owner 0x"+strconv.FormatUint(he.Owner, 16))

	// With its own start time, it is alive.
	h.setEntry(slot, 7, pid, start, ns)
	_, err = h.acquire(300 * time.Millisecond)
	require.ErrorAs(t, err, &he)
	assert.Equal(t, shm.Alive, he.Holder.State)

	// Then the process dies and is reaped: dead although the escaped
	// descriptor still holds the lock.
	sleeper.Process.Kill()
	sleeper.Wait()
	rec, err = h.acquire(recoveryBound)
	require.NoError(t, err)
	assert.True(t, rec)
	drop()
	assert.EqualValues(t, 2, h.mu.Inspect().Recoveries)
}

// Corrupt owner words and corrupt records are recovered without ever calling
// kill with 0 (our process group), a negative pid (-1: every process we may
// signal) or one above pid_max.
func TestCorruptOwnerWords(t *testing.T) {
	h := newModeHarness(t, 60*time.Second, shm.ModeProbe)
	rec := recordKills(t)
	ns := owner.Self().NS
	allOnes := ^uint64(0)
	for _, tc := range []struct {
		name string
		word uint64
		set  func()
	}{
		{"held, slot 0", ownerWord(3, 0, 5), nil},
		{"all ones (-1)", allOnes, nil},
		{"slot above the table", ownerWord(3, 65, 1), nil},
		{"slot never claimed", ownerWord(3, 61, 9), nil},
		{"pid 0 in the record", ownerWord(3, 62, 1), func() { h.setEntry(62, 1, 0, 1, ns) }},
		{"pid -1 in the record", ownerWord(3, 62, 2), func() { h.setEntry(62, 2, -1, 1, ns) }},
		{"pid above pid_max", ownerWord(3, 62, 3), func() { h.setEntry(62, 3, owner.PIDMax()+1, 1, ns) }},
		{"pid min int32", ownerWord(3, 62, 4), func() { h.setEntry(62, 4, -1<<31, 1, ns) }},
	} {
		if tc.set != nil {
			tc.set()
		}
		h.setOwner(tc.word)
		got, err := h.acquire(recoveryBound)
		require.NoError(t, err, tc.name)
		assert.True(t, got, "%s: recovered", tc.name)
	}
	// A corrupt record whose liveness lock a live process holds is not
	// stolen: something alive claims that slot.
	h.setEntry(63, 1, -1, 1, ns)
	drop := h.holdSlotLock(63)
	defer drop()
	h.setOwner(ownerWord(3, 63, 1))
	_, err := h.acquire(300 * time.Millisecond)
	var he *shmlock.HeldError
	require.ErrorAs(t, err, &he)
	assert.Contains(t, he.Error(), "impossible pid -1")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, pid := range rec.kills {
		assert.Positive(t, pid)
	}
}

// A holder in another PID namespace (a container sharing /dev/shm): its PID
// means nothing here and is never probed, but its liveness lock is seen
// across namespaces. Alive, it is not robbed; killed, it is recovered. The
// same for a holder in another time namespace, whose start time reads
// differently from here.
func TestHolderInAnotherPIDNamespace(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) not installed")
	}
	if out, err := exec.Command(unshare, "--pid", "--fork", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here (needs root): %v %s", err, out)
	}
	for _, tc := range []struct {
		name, reason string
		args         []string
	}{
		// Its own /proc: it publishes its namespace, which is not ours.
		{"own proc", "another PID namespace", []string{"--pid", "--fork", "--mount-proc"}},
		// The host's /proc: its numbers would be wrong, so it publishes none.
		{"host proc", "PID namespace unknown", []string{"--pid", "--fork"}},
		// Our PID namespace, but another boot time: its start time reads
		// differently here, which must not pass for PID reuse.
		{"time namespace", "liveness lock is held", []string{"--time", "--boottime", "100000", "--fork"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newModeHarness(t, 60*time.Second, shm.ModeProbe)
			rec := recordKills(t)
			cmd := proctest.Command("hold", h.path)
			require.NoError(t, proctest.Via(cmd, append(append([]string{unshare}, tc.args...), "--kill-child")...))
			holder := h.Start(cmd)
			h.waitHeld()

			if tc.args[0] == "--pid" {
				snap := h.mu.Inspect()
				assert.EqualValues(t, 1, snap.Holder.PID, "the holder is pid 1 of its namespace")
			}
			_, err := h.acquire(300 * time.Millisecond)
			var he *shmlock.HeldError
			require.ErrorAs(t, err, &he, holder.Output())
			assert.Equal(t, shm.Alive, he.Holder.State)
			assert.Contains(t, he.Error(), tc.reason)
			rec.mu.Lock()
			assert.NotContains(t, rec.kills, 1, "pid 1 of another namespace was probed here")
			rec.mu.Unlock()

			holder.Kill() // --kill-child takes the holder down
			got, err := h.acquire(recoveryBound)
			require.NoError(t, err)
			assert.True(t, got)
		})
	}
}
