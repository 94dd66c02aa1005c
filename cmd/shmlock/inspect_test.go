//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/owner"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// The region the inspect tests share with their children: a Mutex at 0, a
// SeqLock of 64 bytes at 64, a Record of 64 bytes at 192.
const (
	iMutex   = 0
	iSeq     = 64
	iRecord  = 192
	iSize    = 4096
	iSlots   = 8
	iRW      = 1024 // an RWMutex, in the tests that make one
	iDataOff = 4096 // the data area's offset in the file: the header, 64 + 8*64 bytes, rounded to a page
)

// cliEnv makes the re-executed test binary run the command line (main), as
// the shmlock binary would, with the test binary's arguments.
const cliEnv = "SHMLOCK_TEST_CLI"

// cliMain runs, in a re-executed test binary, the command line or a role.
func cliMain() {
	if os.Getenv(cliEnv) != "" {
		time.AfterFunc(60*time.Second, func() { os.Exit(3) })
		main()
		os.Exit(0)
	}
	proctest.DispatchFunc(func(role string, args []string) int { return runRole(role, strings.Join(args, " ")) })
}

type objects struct {
	r   *shm.Region
	mu  *shmlock.Mutex
	seq *seqlock.SeqLock
	rec *seqlock.Record
}

// openObjects opens the region at path in mode (children: ModeAuto, the mode
// their test created it in) and its three locks.
func openObjects(path string, mode shm.Mode) (*objects, error) {
	r, err := shm.Open(path, shm.Options{Size: iSize, Slots: iSlots, Mode: mode})
	if err != nil {
		return nil, err
	}
	o := &objects{r: r}
	if o.mu, err = shmlock.New(r, iMutex); err != nil {
		return nil, err
	}
	if o.seq, err = seqlock.NewSeqLock(r, iSeq, 64); err != nil {
		return nil, err
	}
	if o.rec, err = seqlock.NewRecord(r, iRecord, 64); err != nil {
		return nil, err
	}
	return o, nil
}

// runRole: "hold" takes the Mutex, "write-open" begins a SeqLock write and
// stores half of it; both say "held" and wait to be killed.
func runRole(role, path string) int {
	o, err := openObjects(path, shm.ModeAuto)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	switch role {
	case "hold":
		o.mu.Lock()
	case "rw-read":
		rw, err := shmlock.NewRWMutex(o.r, iRW)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		rw.RLock()
	case "write-open":
		w, err := o.seq.Write(context.Background())
		if err != nil {
			fmt.Println(err)
			return 1
		}
		w.StoreAt(0, []byte("half wri"))
	default:
		return 2
	}
	fmt.Println("held")
	select {}
}

type cliResult struct {
	out, errOut string
	code        int
}

// cli runs the command line in a child process and returns what it printed
// and its exit status.
func cli(t *testing.T, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return cliResult{out.String(), errOut.String(), code}
}

// startHolder starts a child in role on the region at path and waits until it
// holds.
func startHolder(t *testing.T, role, path string) *proctest.Child {
	t.Helper()
	c := proctest.New(t, 2*time.Minute).Spawn(role, path)
	proctest.Eventually(t, 10*time.Second, "the child never held", func() bool {
		return strings.Contains(c.Output(), "held")
	})
	return c
}

func fileHash(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// newRegion creates the test region in probe mode, whose verdicts the tests
// read (see TestInspectRobust for the other).
func newRegion(t *testing.T) (string, *objects) { return newRegionIn(t, shm.ModeProbe) }

func newRegionIn(t *testing.T, mode shm.Mode) (string, *objects) {
	path := filepath.Join(t.TempDir(), "region")
	o, err := openObjects(path, mode)
	require.NoError(t, err)
	t.Cleanup(func() { o.r.Close() })
	return path, o
}

// inspect shows every lock, free or held, with its holder's pid and a verdict
// with its reason, in a table and in JSON; and it changes nothing in the file.
func TestInspect(t *testing.T) {
	proctest.New(t, 60*time.Second) // the watchdog
	path, o := newRegion(t)
	u, err := o.rec.Write(context.Background()) // the Record's writers' lock: held by us
	require.NoError(t, err)
	defer u.Release()
	holderCmd := startHolder(t, "hold", path)
	writer := startHolder(t, "write-open", path)

	before := fileHash(t, path)
	res := cli(t, "inspect", path)
	after := fileHash(t, path)
	require.Zero(t, res.code, res.errOut)
	assert.Equal(t, before, after, "inspect changed the region file")
	t.Logf("\n%s", res.out)
	assert.Contains(t, res.out, "layout version 5, probe mode")
	assert.Contains(t, res.out, "attached processes: 3")
	assert.Regexp(t, fmt.Sprintf(`(?m)^\s+0\s+mutex\s+-\s+held\s+%d\s+alive`, holderCmd.Pid()), res.out)
	assert.Regexp(t, fmt.Sprintf(`(?m)^\s+64\s+seqlock\s+64\s+held\s+%d\s+alive.*write open\), clean`, writer.Pid()), res.out)
	assert.Regexp(t, `(?m)^\s+192\s+record\s+64\s+held`, res.out)
	assert.Contains(t, res.out, "A live holder is never robbed")

	// JSON, for scripts.
	res = cli(t, "inspect", "-json", path)
	require.Zero(t, res.code, res.errOut)
	var rep report
	require.NoError(t, json.Unmarshal([]byte(res.out), &rep), res.out)
	require.Len(t, rep.Locks, 3)
	assert.Equal(t, "mutex", rep.Locks[0].Kind)
	assert.EqualValues(t, holderCmd.Pid(), rep.Locks[0].Holder.PID)
	assert.Equal(t, "alive", rep.Locks[0].Holder.State)
	assert.True(t, *rep.Locks[1].Seq&1 == 1, "the open write shows as an odd sequence")

	// The holders die: inspect says so, and what happens next. Nobody
	// waits, so the locks stay held by the dead until someone comes.
	holderCmd.Kill()
	writer.Kill()
	before = fileHash(t, path)
	res = cli(t, "inspect", path)
	require.Zero(t, res.code, res.errOut)
	t.Logf("\n%s", res.out)
	assert.Regexp(t, `(?m)^\s+0\s+mutex\s+-\s+held\s+\d+\s+dead`, res.out)
	assert.Regexp(t, `(?m)^\s+64\s+seqlock\s+64\s+held\s+\d+\s+dead`, res.out)
	assert.Contains(t, res.out, "The next waiter takes the lock over")
	assert.Equal(t, before, fileHash(t, path), "inspect recovered or changed something")
}

// In robust mode inspect says so, names the holder's pid and the thread its
// lock word names, and shows a dead holder's lock as the kernel left it:
// free, owner died, not yet taken over; the next Acquire counts and is told.
func TestInspectRobust(t *testing.T) {
	proctest.New(t, 60*time.Second) // the watchdog
	path, o := newRegionIn(t, shm.ModeRobust)
	holderCmd := startHolder(t, "hold", path)
	res := cli(t, "inspect", path)
	require.Zero(t, res.code, res.errOut)
	t.Logf("\n%s", res.out)
	assert.Contains(t, res.out, "layout version 5, robust mode")
	assert.Regexp(t, fmt.Sprintf(`(?m)^\s+0\s+mutex\s+-\s+held\s+%d\s+alive`, holderCmd.Pid()), res.out)
	assert.Regexp(t, fmt.Sprintf(`pid %d \(thread \d+\) is alive`, holderCmd.Pid()), res.out)
	res = cli(t, "inspect", "-json", path)
	require.Zero(t, res.code, res.errOut)
	var rep report
	require.NoError(t, json.Unmarshal([]byte(res.out), &rep), res.out)
	assert.Equal(t, "robust", rep.Region.Mode)
	assert.EqualValues(t, rep.Locks[0].Owner, fmt.Sprintf("%#x", o.mu.Inspect().Owner))
	assert.NotZero(t, rep.Locks[0].Holder.TID)

	holderCmd.Kill()
	res = cli(t, "inspect", path)
	require.Zero(t, res.code, res.errOut)
	t.Logf("\n%s", res.out)
	assert.Regexp(t, `(?m)^\s+0\s+mutex\s+-\s+free, owner died\s+-\s+-\s+-\s+1\s+0\s`, res.out)
	g, err := o.mu.Acquire(context.Background())
	require.NoError(t, err)
	assert.True(t, g.Recovered())
	g.Release()
	assert.EqualValues(t, 1, o.mu.Inspect().Recoveries)
}

// entryBytes is the size of a process-table entry (shm/layout.go).
const entryBytes = 128

// A holder whose death cannot be verified (its liveness lock is held by a
// descriptor that outlived it, and /proc says its pid now names another
// process) is shown unverifiable, with the break command to run; break frees
// exactly that owner, once, and the next Acquire is told.

func TestInspectUnverifiableAndBreak(t *testing.T) {
	path, o := newRegion(t)
	// The holder's record: this process's pid with another start time (a
	// reused pid), in slot 8, whose liveness lock a descriptor keeps.
	const slot, inc = iSlots, 5
	self := owner.Self()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	var e [40]byte
	ne := binary.NativeEndian
	ne.PutUint32(e[0:], inc)
	ne.PutUint32(e[4:], uint32(os.Getpid()))
	ne.PutUint64(e[8:], self.Start+1000)
	ne.PutUint64(e[16:], self.NS)
	ne.PutUint64(e[32:], self.TimeNS)
	_, err = f.WriteAt(e[:], slot*entryBytes)
	require.NoError(t, err)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: slot * entryBytes, Len: 1}
	require.NoError(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk))
	owner := uint64(7)<<32 | inc<<10 | slot
	line, err := region.Of(o.r).Line(iMutex)
	require.NoError(t, err)
	atomic.StoreUint64(&line[0], owner)

	res := cli(t, "inspect", path)
	require.Zero(t, res.code, res.errOut)
	t.Logf("\n%s", res.out)
	assert.Regexp(t, `(?m)^\s+0\s+mutex\s+-\s+held\s+\d+\s+unverifiable`, res.out)
	assert.Contains(t, res.out, "was reused")
	breakCmd := fmt.Sprintf("shmlock break %s 0 --owner %#x", path, owner)
	assert.Contains(t, res.out, breakCmd)

	// A stale owner value breaks nothing.
	res = cli(t, "break", path, "0", "--owner", fmt.Sprintf("%#x", owner+1<<32))
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "owner changed")
	assert.Equal(t, owner, atomic.LoadUint64(&line[0]))

	// The command inspect printed, flags after the positional arguments.
	res = cli(t, strings.Fields(breakCmd)[1:]...)
	require.Zero(t, res.code, res.errOut)
	assert.Contains(t, res.out, "replaced by a free word")
	s := o.mu.Inspect()
	assert.False(t, s.Held)
	assert.True(t, s.OwnerDied)
	assert.Zero(t, s.Recoveries, "counted when taken over")
	g, err := o.mu.Acquire(context.Background())
	require.NoError(t, err)
	assert.True(t, g.Recovered(), "the next Acquire is told")
	g.Release()
	assert.EqualValues(t, 1, o.mu.Inspect().Recoveries)

	// Once is all: the same owner again changes nothing.
	res = cli(t, strings.Fields(breakCmd)[1:]...)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "shmlock:")
}

// break refuses a holder that is alive, unless -force; and a lock that is
// not there.
func TestBreakRefusesTheLiving(t *testing.T) {
	proctest.New(t, 60*time.Second) // the watchdog
	path, o := newRegion(t)
	startHolder(t, "hold", path)
	s := o.mu.Inspect()
	require.True(t, s.Held)
	res := cli(t, "break", path, "0", "--owner", fmt.Sprintf("%#x", s.Owner))
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "is alive")
	assert.Equal(t, s.Owner, o.mu.Inspect().Owner, "refused, and changed nothing")

	res = cli(t, "break", path, "128", "--owner", "0x401")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "no lock at offset 128")

	res = cli(t, "break", path, "0", "--owner", fmt.Sprintf("%#x", s.Owner), "-force")
	require.Zero(t, res.code, res.errOut)
	assert.False(t, o.mu.Inspect().Held)
}

// Usage errors exit 2 with usage on stderr; -h exits 0; a missing region
// exits 1 with a clear error; a foreign file is refused, typed.
func TestCLIErrors(t *testing.T) {
	res := cli(t)
	assert.Equal(t, 2, res.code)
	assert.Contains(t, res.errOut, "usage: shmlock")
	res = cli(t, "inspect")
	assert.Equal(t, 2, res.code)
	assert.Contains(t, res.errOut, "usage: shmlock inspect")
	res = cli(t, "inspect", "-h")
	assert.Equal(t, 0, res.code, res.errOut)
	res = cli(t, "break", "/nonexistent/region", "0")
	assert.Equal(t, 2, res.code, "no --owner")
	res = cli(t, "break", "/nonexistent/region", "zero", "--owner", "0x401")
	assert.Equal(t, 2, res.code, "an offset that is not a number")
	res = cli(t, "inspect", filepath.Join(t.TempDir(), "missing"))
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "no such file")
	foreign := filepath.Join(t.TempDir(), "foreign")
	require.NoError(t, os.WriteFile(foreign, bytes.Repeat([]byte("x"), 8192), 0o600))
	res = cli(t, "inspect", foreign)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "not a shmlock region")
	assert.Equal(t, bytes.Repeat([]byte("x"), 8192), must(os.ReadFile(foreign)), "inspect wrote to a foreign file")
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A region truncated while inspect reads it (between its checks and its
// reads) faults the mapping: inspect reports it, and does not crash.
func TestInspectTruncatedUnderIt(t *testing.T) {
	path, _ := newRegion(t)
	r, err := shm.OpenReadOnly(path)
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, os.Truncate(path, 0))
	_, err = describe(r)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "truncated")
	assert.ErrorIs(t, region.Of(r).Check(), shm.ErrTruncated)
}

// inspect shows the processes that hold read shares of an RWMutex, with
// their verdicts; break --reader frees the shares of one, refusing a live
// one unless -force.
func TestInspectRWReaders(t *testing.T) {
	proctest.New(t, 60*time.Second) // the watchdog
	path, o := newRegion(t)
	rw, err := shmlock.NewRWMutex(o.r, iRW)
	require.NoError(t, err)
	reader := startHolder(t, "rw-read", path)
	res := cli(t, "inspect", path)
	require.Zero(t, res.code, res.errOut)
	assert.Contains(t, res.out, "rwmutex")
	assert.Contains(t, res.out, fmt.Sprintf("pid %d holds 1 read shares, and is alive", reader.Pid()))
	assert.Contains(t, res.out, "1 read shares in 1 processes, 0 dead readers freed")

	res = cli(t, "inspect", "-json", path)
	require.Zero(t, res.code, res.errOut)
	var rep report
	require.NoError(t, json.Unmarshal([]byte(res.out), &rep))
	var word string
	for _, l := range rep.Locks {
		if l.Off == iRW {
			require.Len(t, l.Readers, 1)
			assert.EqualValues(t, 1, l.Readers[0].Shares)
			assert.EqualValues(t, reader.Pid(), l.Readers[0].Holder.PID)
			word = l.Readers[0].Word
		}
	}
	require.NotEmpty(t, word, "no rwmutex in the JSON")

	res = cli(t, "break", path, strconv.Itoa(iRW), "--reader", word)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "is alive")
	require.Len(t, rw.Inspect().Readers, 1, "refused, and changed nothing")
	res = cli(t, "break", path, strconv.Itoa(iMutex), "--reader", word)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.errOut, "not an rwmutex")
	res = cli(t, "break", path, strconv.Itoa(iRW), "--reader", word, "-force")
	require.Zero(t, res.code, res.errOut)
	assert.Empty(t, rw.Inspect().Readers)
	assert.EqualValues(t, 1, rw.Inspect().ReadersFreed)
	require.True(t, rw.TryLock(), "the freed shares still hold writers off")
	rw.Unlock()
}
