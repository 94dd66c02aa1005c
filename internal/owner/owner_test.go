//go:build linux

package owner

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	if os.Getenv("OWNER_TEST_SELF") != "" {
		s := Self()
		fmt.Println(s.PID, s.Start, s.NS, s.TimeNS)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseStat(t *testing.T) {
	rest := " 1 1 1 0 -1 4194304 122 0 1 0 0 0 0 0 20 0 1 0 216178 3133440 395"
	for _, tc := range []struct {
		line  string
		state byte
		start uint64
	}{
		{"1857 (cat) R" + rest, 'R', 216178},
		{"42 (a b) c) S" + rest, 'S', 216178},      // spaces and a ')' in the name
		{"42 ((x)) (y) Z" + rest, 'Z', 216178},     // parentheses everywhere
		{"42 () T" + rest + " 7 8 9", 'T', 216178}, // empty name, trailing fields
	} {
		st, err := ParseStat([]byte(tc.line))
		require.NoError(t, err, tc.line)
		assert.Equal(t, tc.state, st.State, tc.line)
		assert.Equal(t, tc.start, st.Start, tc.line)
	}
	for _, bad := range []string{"", "42 cat R 1 2", "42 (cat) R 1 2 3", ") 42 (cat R" + rest,
		"42 (cat) RR" + rest, "42 (cat) R" + strings.Replace(rest, "216178", "x", 1)} {
		_, err := ParseStat([]byte(bad))
		assert.ErrorIs(t, err, ErrStatFormat, bad)
	}
}

func TestSelf(t *testing.T) {
	s := Self()
	assert.EqualValues(t, os.Getpid(), s.PID)
	assert.NotZero(t, s.Start, "start time read from /proc/self/stat")
	assert.NotZero(t, s.NS, "PID namespace inode")
}

// recorder is a Sys that answers from a table and records every call.
type recorder struct {
	kills []int
	stats []int
	kill  map[int]error
	stat  map[int]Stat
}

func (r *recorder) Kill0(pid int) error {
	r.kills = append(r.kills, pid)
	if pid == 800 && countOf(r.kills, 800) == 1 {
		return nil // first call: exists; second: gone
	}
	if err, ok := r.kill[pid]; ok {
		return err
	}
	return errNoProcess
}

func (r *recorder) Stat(pid int) (Stat, error) {
	r.stats = append(r.stats, pid)
	if st, ok := r.stat[pid]; ok {
		return st, nil
	}
	return Stat{}, errNoProcess
}

func withSys(t *testing.T, s Sys) {
	old := SetSys(s)
	t.Cleanup(func() { SetSys(old) })
}

func TestJudgeTable(t *testing.T) {
	me := Process{PID: 100, Start: 5, NS: 7, TimeNS: 3}
	at := func(pid int32, start, ns uint64) Process { return Process{pid, start, ns, 3} }
	rec := &recorder{
		kill: map[int]error{200: nil, 300: errPermission, 400: nil, 500: nil, 700: errPermission, 900: nil},
		stat: map[int]Stat{200: {'S', 1, 50}, 300: {'T', 1, 60}, 400: {'Z', 1, 70}, 500: {'R', 1, 999}, 900: {'Z', 3, 90}},
	}
	withSys(t, rec)
	for _, tc := range []struct {
		name   string
		p      Process
		live   Liveness
		want   State
		reason string
	}{
		{"alive and sleeping", at(200, 50, 7), LockHeld, Alive, "sleeping"},
		{"another user's, stopped (EPERM)", at(300, 60, 7), LockHeld, Alive, "stopped"},
		{"no such process, lock held", at(600, 1, 7), LockHeld, Dead, "does not exist"},
		{"liveness lock free", at(200, 50, 7), LockFree, Dead, "liveness lock is free"},
		// A held lock is overruled by ESRCH only, never by /proc readings.
		// /proc says dead but the lock is held (an escaped descriptor):
		// not taken, but not called alive either.
		{"zombie, lock held", at(400, 70, 7), LockHeld, Unverifiable, "may have outlived it"},
		{"pid reused, lock held", at(500, 71, 7), LockHeld, Unverifiable, "may have outlived it"},
		// Without the lock, /proc decides.
		{"zombie, lock unknown", at(400, 70, 7), LockUnknown, Dead, "zombie"},
		{"zombie leader with live threads", at(900, 90, 7), LockUnknown, Alive, "in state Z"},
		{"pid reused, lock unknown", at(500, 71, 7), LockUnknown, Dead, "reused"},
		{"start times of another time namespace", Process{500, 71, 7, 4}, LockUnknown, Alive, "running"},
		{"time namespace unknown", Process{500, 71, 7, 0}, LockUnknown, Alive, "running"},
		{"start time unknown", at(500, 0, 7), LockUnknown, Alive, "running"},
		{"no such process, lock unknown", at(600, 1, 7), LockUnknown, Dead, "does not exist"},
		{"other namespace, lock held", at(1, 9, 8), LockHeld, Alive, "another PID namespace"},
		{"other namespace, lock free", at(1, 9, 8), LockFree, Dead, "liveness lock is free"},
		{"other namespace, lock unknown", at(1, 9, 8), LockUnknown, Unverifiable, "another PID namespace"},
		{"namespace unknown", at(200, 50, 0), LockUnknown, Unverifiable, "namespace unknown"},
		{"pid 0, lock free", at(0, 1, 7), LockFree, Dead, "impossible pid 0"},
		{"pid -1, lock free", at(-1, 1, 7), LockFree, Dead, "impossible pid -1"},
		{"pid above pid_max, lock free", at(PIDMax()+1, 1, 7), LockFree, Dead, "impossible pid"},
		{"pid -1, lock held", at(-1, 1, 7), LockHeld, Alive, "impossible pid -1"},
		{"pid 0, lock unknown", at(0, 1, 7), LockUnknown, Unverifiable, "impossible pid 0"},
		{"min int32", at(-1<<31, 1, 7), LockUnknown, Unverifiable, "impossible pid"},
		// hidepid: kill says it exists (EPERM), /proc hides it.
		{"hidden by hidepid", at(700, 1, 7), LockHeld, Alive, "unreadable"},
		{"hidden, lock unknown", at(700, 1, 7), LockUnknown, Alive, "unreadable"},
		// Exists at kill, gone from /proc, and gone at the second kill.
		{"exited between the calls", at(800, 1, 7), LockHeld, Dead, "does not exist"},
	} {
		v := Judge(me, tc.p, tc.live)
		assert.Equal(t, tc.want, v.State, "%s: %v", tc.name, v)
		assert.Contains(t, v.Reason, tc.reason, tc.name)
	}
	for _, pid := range rec.kills {
		assert.True(t, pid >= 1 && pid <= int(PIDMax()), "kill(%d, 0) was called", pid)
	}
	for _, pid := range append(rec.stats, rec.kills...) {
		assert.NotEqual(t, 1, pid, "a pid from another namespace was probed here")
	}
}

func TestRealKillRefusesNonPositive(t *testing.T) {
	for _, pid := range []int{0, -1, -2} {
		assert.Equal(t, syscall.EINVAL, realSys{}.Kill0(pid))
	}
}

// A zombie answers kill(pid, 0) like a live process; the probe must not.
func TestZombieIsDead(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	defer cmd.Wait()
	p := Process{PID: int32(cmd.Process.Pid), NS: Self().NS, TimeNS: Self().TimeNS}
	st, err := realSys{}.Stat(cmd.Process.Pid)
	require.NoError(t, err)
	p.Start = st.Start
	assert.Equal(t, Alive, Judge(Self(), p, LockUnknown).State, "a live child")

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	waitState(t, cmd.Process.Pid, 'Z')
	require.NoError(t, syscall.Kill(cmd.Process.Pid, 0), "kill(pid, 0) succeeds on a zombie")
	v := Judge(Self(), p, LockUnknown)
	assert.Equal(t, Dead, v.State, v.String())
	assert.Contains(t, v.Reason, "zombie")
}

// A PID that now belongs to another, live process (here our own parent, with
// a start time that is not its own) is a dead holder.
func TestPIDReuseIsDead(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	st, err := realSys{}.Stat(cmd.Process.Pid)
	require.NoError(t, err)
	p := Process{PID: int32(cmd.Process.Pid), Start: st.Start + 1, NS: Self().NS, TimeNS: Self().TimeNS}
	v := Judge(Self(), p, LockUnknown)
	assert.Equal(t, Dead, v.State, v.String())
	assert.Contains(t, v.Reason, "reused")
	assert.Equal(t, Unverifiable, Judge(Self(), p, LockHeld).State, "a held liveness lock is not overruled by /proc")
	p.Start = st.Start
	assert.Equal(t, Alive, Judge(Self(), p, LockUnknown).State, "the same process with its own start time")
}

func waitState(t *testing.T, pid int, want byte) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := realSys{}.Stat(pid)
		if err == nil && st.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never reached state %c (last %c, %v)", pid, want, st.State, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func countOf(xs []int, x int) int {
	n := 0
	for _, v := range xs {
		if v == x {
			n++
		}
	}
	return n
}

// A process whose /proc belongs to another PID namespace (unshare --pid
// without --mount-proc) must not publish a namespace: its /proc numbers
// describe other processes. With its own /proc mounted, it does.
func TestSelfWithForeignProc(t *testing.T) {
	if out, err := exec.Command("unshare", "--pid", "--fork", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here (needs root and util-linux): %v %s", err, out)
	}
	run := func(args ...string) []string {
		cmd := exec.Command("unshare", append(args, os.Args[0], "-test.run=^$")...)
		cmd.Env = append(os.Environ(), "OWNER_TEST_SELF=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
		return strings.Fields(string(out))
	}
	f := run("--pid", "--fork")
	assert.Equal(t, []string{"1", "0", "0", "0"}, f, "pid 1 of a new namespace reading the host's /proc")
	f = run("--pid", "--fork", "--mount-proc")
	require.Len(t, f, 4)
	assert.Equal(t, "1", f[0])
	assert.NotEqual(t, "0", f[1], "its own /proc: start time known")
	assert.NotEqual(t, "0", f[2], "its own /proc: namespace known")
	assert.NotEqual(t, fmt.Sprint(Self().NS), f[2])
}
