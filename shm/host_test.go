//go:build linux

package shm

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/internal/robust"
)

// hostRoles are the children of the tests of this file, run by runChild.
var hostRoles = map[string]func(arg string) int{
	"pdeathsig": pdeathsigChild,
}

// pdeathsigChild: arg "close,dir" or "search,dir". It starts 100 (close) or
// 20 (search) children, sleep 60, with Pdeathsig SIGKILL, each from a
// goroutine of its own, so that the threads that fork them are spread over
// the runtime's threads; after each start it opens a robust region, makes 4
// locks and closes it, and for search first plants every thread ID of this
// process, and the next one, as taken by live attachments, so that the search
// for a free ID tries and rejects them all. It prints how many children were
// killed while it lived: each such child's forking thread ended.
func pdeathsigChild(arg string) int {
	how, dir, _ := strings.Cut(arg, ",")
	n := 100
	if how == "search" {
		n = 20
	}
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			c.Process.Kill()
		}
	}()
	for i := range n {
		c := exec.Command("sleep", "60")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		started := make(chan error)
		go func() { started <- c.Start() }()
		if err := <-started; err != nil {
			fmt.Println(err)
			return 1
		}
		children = append(children, c)
		if err := openUseClose(filepath.Join(dir, fmt.Sprint(i)), how == "search"); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	time.Sleep(100 * time.Millisecond) // a parent-death signal comes at once; give it time
	killed := 0
	for _, c := range children {
		var ws syscall.WaitStatus
		if pid, err := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil); err == nil && pid == c.Process.Pid && ws.Signaled() {
			killed++
		}
	}
	fmt.Printf("killed=%d of %d\n", killed, n)
	return 0
}

// openUseClose opens a robust region at path, makes 4 locks and closes it; if
// search, every thread ID of this process and the next one are first
// recorded in the table by live claimants.
func openUseClose(path string, search bool) error {
	opt := Options{Size: 4 * LineSize, Mode: ModeRobust, Slots: 16}
	if search {
		keep, err := Open(path, opt)
		if err != nil {
			return err
		}
		defer keep.Close()
		tids, err := threadIDs(1)
		if err != nil {
			return err
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		for s := 3; len(tids) > 0; s++ {
			if s > opt.Slots {
				return fmt.Errorf("%d thread IDs do not fit the table", len(tids))
			}
			var e [entryBytes]byte
			k := min(len(tids), maxTIDs)
			for i, tid := range tids[:k] {
				binary.NativeEndian.PutUint32(e[entTIDs+4*i:], tid)
			}
			binary.NativeEndian.PutUint32(e[entNTIDs:], uint32(k))
			// The lock first, as a claimant takes it.
			if err := tryLockByte(int(f.Fd()), int64(s*entryBytes)); err != nil {
				return err
			}
			if _, err := f.WriteAt(e[:], int64(s*entryBytes)); err != nil {
				return err
			}
			tids = tids[k:]
		}
	}
	r, err := Open(path, opt)
	if err != nil {
		return err
	}
	for i := range 4 {
		if err := r.place(i*LineSize, region.KindMutex, 0); err != nil {
			return err
		}
		if _, err := r.ownerFor(i * LineSize); err != nil {
			return err
		}
	}
	return r.Close()
}

// threadIDs returns the IDs of every thread of this process and of the next
// n the kernel will hand out in its PID namespace: in turn after the last
// one it handed out (ns_last_pid), wrapping past pid_max to 300
// (RESERVED_PIDS).
func threadIDs(n int) ([]uint32, error) {
	// The last ID first: a thread started after it is read has a later
	// one, which the list of threads read next shows, or the IDs after.
	newest := uint32(0)
	if b, err := os.ReadFile("/proc/sys/kernel/ns_last_pid"); err == nil {
		last, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if err != nil {
			return nil, err
		}
		newest = uint32(last)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var tids []uint32
	for _, d := range tasks {
		id, err := strconv.ParseUint(d.Name(), 10, 32)
		if err != nil {
			return nil, err
		}
		tids = append(tids, uint32(id))
		newest = max(newest, uint32(id))
	}
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		return nil, err
	}
	pidMax, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return nil, err
	}
	for i, id := 0, newest; i < n; i++ {
		if id++; id >= uint32(pidMax) {
			id = 300
		}
		tids = append(tids, id)
	}
	return tids, nil
}

// The library never ends a thread that may have run the host's goroutines: a
// child whose parent-death signal is tied to the thread that forked it
// (Pdeathsig) lives as long as its parent, however many robust regions the
// parent opens, uses and closes meanwhile, and however many threads a search
// for a free thread ID tries and rejects.
func TestRobustKeepsHostThreads(t *testing.T) {
	for _, how := range []string{"close", "search"} {
		t.Run(how, func(t *testing.T) {
			out, err := runRole(t, os.Args[0], nil, "pdeathsig", how+","+t.TempDir())
			require.NoError(t, err, out)
			t.Logf("%s", out)
			require.Contains(t, out, "killed=0 of", "children killed by the end of their forking thread")
		})
	}
}

// shmTempDir returns a temporary directory on /dev/shm (tmpfs), removed at the
// end of the test.
func shmTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp(Dir, "shmtest-")
	if err != nil {
		t.Skipf("no %s: %v", Dir, err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Threads do not grow with the number of robust regions: 10,500 held open in
// one process (Go ends a process past 10,000 threads) share the process's
// robust lists, and every one of them works.
func TestRobustManyRegions(t *testing.T) {
	const n = 10_500
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur < n+500 {
		t.Skipf("RLIMIT_NOFILE is %d: %d regions need a descriptor each", lim.Cur, n)
	}
	dir := shmTempDir(t)
	before := threads(t)
	regions := make([]*Region, 0, n)
	defer func() {
		for _, r := range regions {
			r.Close()
		}
	}()
	tids := map[uint32]int{}
	start := time.Now()
	for i := range n {
		r, err := Open(filepath.Join(dir, strconv.Itoa(i)), Options{Size: LineSize, Slots: 1, Mode: ModeRobust})
		require.NoError(t, err, "region %d", i)
		regions = append(regions, r)
		require.NoError(t, r.place(0, region.KindMutex, 0))
		tid, err := r.ownerFor(0)
		require.NoError(t, err)
		tids[tid]++
	}
	t.Logf("%d robust regions opened in %v; threads %d before, %d after; %d robust lists (%d threads carry them)",
		n, time.Since(start), before, threads(t), len(tids), robust.Threads())
	// The runtime adds threads of its own while Open's system calls block;
	// those are bounded by the calls in flight, not by the regions.
	require.LessOrEqual(t, robust.Threads(), n/robust.Limit+2, "robust threads grew with the regions")
	require.LessOrEqual(t, threads(t), before+64, "threads grew with the regions")
	require.LessOrEqual(t, len(tids), n/robust.Limit+2, "lines spread over more lists than they fill")
}

// Containers number their threads alike, so the kth container on a region
// finds the next k-1 thread IDs of its PID namespace taken: 80 processes,
// each in a PID namespace of its own and allowed 40 threads at most
// (debug.SetMaxThreads), attach to one robust region and hold a lock each.
// Every one gets an ID of its own, with a handful of threads, and none dies.
func TestRobustManyContainers(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) not installed")
	}
	if out, err := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here (needs root): %v %s", err, out)
	}
	const n = 80
	path := tempPath(t)
	r, err := Open(path, Options{Size: 4096, Slots: 256, Mode: ModeRobust})
	require.NoError(t, err)
	defer r.Close()
	tids := map[uint32]int{}
	most := 0
	start := time.Now()
	h := proctest.New(t, 5*time.Minute)
	for i := range n {
		cmd := proctest.Command("attach-tid", path)
		cmd.Env = append(cmd.Env, "SHM_TEST_MAX_THREADS=40")
		require.NoError(t, proctest.Via(cmd, unshare, "--pid", "--fork", "--mount-proc", "--kill-child"))
		c := h.Start(cmd)
		proctest.Eventually(t, 20*time.Second, fmt.Sprintf("container %d never attached", i), func() bool {
			return strings.Contains(c.Output(), "threads=") || strings.Contains(c.Output(), ":")
		})
		var tid uint32
		var nt int
		_, err := fmt.Sscanf(c.Output(), "id=%d\nthreads=%d", &tid, &nt)
		require.NoError(t, err, "container %d: %s", i, c.Output())
		tids[tid]++
		require.Equal(t, 1, tids[tid], "container %d got thread ID %d, which another holds", i, tid)
		most = max(most, nt)
	}
	t.Logf("%d containers attached in %v; thread IDs %d distinct; at most %d threads in one", n, time.Since(start), len(tids), most)
	assert.LessOrEqual(t, most, 20, "a container kept a thread for each ID it found taken")
}

// The memory a closed region leaves is not given to the next one at once: a
// goroutine that raced Close with a lock method may still hold an address in
// it, and must fault there rather than take another region's lock.
func TestClosedRangeNotReused(t *testing.T) {
	for _, mode := range []Mode{ModeProbe, ModeRobust} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			var ranges [][2]uintptr
			for i := range 20 {
				r, err := Open(filepath.Join(dir, strconv.Itoa(i)), Options{Size: 1 << 20, Mode: mode})
				require.NoError(t, err)
				b, err := r.Bytes(0, r.Size())
				require.NoError(t, err)
				lo := uintptr(unsafe.Pointer(&b[0]))
				hi := lo + uintptr(len(b))
				for _, old := range ranges {
					require.False(t, lo < old[1] && old[0] < hi, "region %d mapped over a closed region's memory", i)
				}
				ranges = append(ranges, [2]uintptr{lo, hi})
				require.NoError(t, r.Close())
			}
		})
	}
}

// A process one thread short of its limit (debug.SetMaxThreads, which ends a
// process past it) that must look for a free thread ID is refused robust
// mode with ErrLimit, and lives: the search would hold the threads it has,
// and the runtime start more meanwhile.
func TestRobustSearchNearThreadLimit(t *testing.T) {
	path := tempPath(t)
	r := openRobust(t, path, Options{Size: 4096, Slots: 64})
	_, err := r.ownerFor(0)
	require.NoError(t, err)
	taken, err := threadIDs(40)
	require.NoError(t, err)
	plantLive(t, path, 3, taken) // our threads and the next IDs: a search must start threads
	out := child(t, os.Args[0], nil, "attach-tid", path, "SHM_TEST_THREAD_ROOM=1")
	proctest.Eventually(t, 20*time.Second, "the child neither attached nor failed", func() bool {
		o := out.Output()
		return strings.Contains(o, "threads=") || strings.Contains(o, "open:") || strings.Contains(o, "fatal error")
	})
	time.Sleep(10 * time.Millisecond)
	t.Logf("%s", out.Output())
	assert.NotContains(t, out.Output(), "fatal error")
	assert.Contains(t, out.Output(), "too few more threads")
}

// userTasks counts the threads of every process of this user (by real user
// ID), as RLIMIT_NPROC does.
func userTasks() int {
	uid := strconv.Itoa(os.Getuid())
	procs, _ := os.ReadDir("/proc")
	n := 0
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue // self, thread-self and the rest
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/status")
		if err != nil {
			continue
		}
		var mine bool
		var threads int
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				f := strings.Fields(v)
				mine = len(f) > 0 && f[0] == uid
			} else if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				threads, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if mine {
			n += threads
		}
	}
	return n
}

// An ordinary user one task short of RLIMIT_NPROC, whose search for a free
// thread ID would start threads, is refused robust mode with ErrLimit, and
// lives (the runtime ends a process that cannot start a thread).
func TestRobustSearchNearNPROC(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a child as another user")
	}
	dir, err := os.MkdirTemp("", "shm-nproc")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	require.NoError(t, os.Chmod(dir, 0o777))
	exe, err := os.ReadFile(os.Args[0])
	require.NoError(t, err)
	bin := filepath.Join(dir, "test.bin")
	require.NoError(t, os.WriteFile(bin, exe, 0o755))
	path := filepath.Join(dir, "region")
	r, err := Open(path, Options{Size: 4096, Slots: 64, Mode: ModeRobust, Perm: 0o666})
	require.NoError(t, err)
	defer r.Close()
	_, err = r.ownerFor(0)
	require.NoError(t, err)
	taken, err := threadIDs(100)
	require.NoError(t, err)
	plantLive(t, path, 3, taken) // the next IDs: the child's search must start threads
	for _, gomaxprocs := range []string{"2", "8"} {
		out := child(t, bin, &syscall.Credential{Uid: 65534, Gid: 65534}, "attach-tid", path, "SHM_TEST_NPROC_ROOM=1", "GOMAXPROCS="+gomaxprocs)
		proctest.Eventually(t, 20*time.Second, "the child neither attached nor failed", func() bool {
			o := out.Output()
			return strings.Contains(o, "threads=") || strings.Contains(o, "open:") || strings.Contains(o, "fatal error") || strings.Contains(o, "setrlimit:")
		})
		time.Sleep(10 * time.Millisecond)
		out.Kill()
		t.Logf("GOMAXPROCS=%s: %s", gomaxprocs, out.Output())
		assert.NotContains(t, out.Output(), "fatal error")
		assert.Contains(t, out.Output(), "too few more threads")
	}
}

// vmSize is this process's reserved address space, in bytes.
func vmSize(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmSize:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmSize")
	return 0
}

// Large regions opened and closed in quick succession (their ranges in
// quarantine) reserve no more address space, and start no more threads, than
// a few of them at once: the quarantine gives way rather than a new arena
// be reserved. Two Regions of one file still open after.
func TestArenaChurn(t *testing.T) {
	for _, mode := range []Mode{ModeProbe, ModeRobust} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(shmTempDir(t), "r")
			size := 128 << 20 // a 32-bit address space holds few of them
			if unsafe.Sizeof(uintptr(0)) == 8 {
				size <<= 5 // 4 GiB
			}
			r, err := Open(path, Options{Size: size, Mode: mode})
			require.NoError(t, err)
			require.NoError(t, r.Close())
			vm, th := vmSize(t), robust.Threads()
			for i := range 300 {
				r, err := Open(path, Options{})
				require.NoError(t, err, "cycle %d", i)
				require.NoError(t, r.place(0, region.KindMutex, 0))
				_, err = r.ownerFor(0)
				require.NoError(t, err)
				require.NoError(t, r.Close())
			}
			a, err := Open(path, Options{})
			require.NoError(t, err)
			defer a.Close()
			b, err := Open(path, Options{})
			require.NoError(t, err, "a second Region of the file")
			defer b.Close()
			grown := vmSize(t) - vm
			t.Logf("300 cycles of a %d MiB region: address space %+d MiB, robust threads %d -> %d", size>>20, grown>>20, th, robust.Threads())
			assert.Less(t, grown, int64(300)*int64(size)/4, "address space grew with the cycles")
			assert.LessOrEqual(t, robust.Threads(), th+2, "threads grew with the cycles")
		})
	}
}

// gib65 is a variable so that 32-bit builds, where the tests using it skip,
// still compile.
var gib65 int64 = 65 << 30

// Robust regions larger than an arena's default half, of many sizes, opened
// and closed one after another: they share a few pools (halves are powers of
// two), so the threads robust lists hold do not grow with the sizes seen.
func TestArenaSizesShareThreads(t *testing.T) {
	if !robust.Available() {
		t.Skip("no robust lists here")
	}
	if unsafe.Sizeof(uintptr(0)) < 8 {
		t.Skip("needs a 64-bit address space")
	}
	dir := shmTempDir(t)
	th0 := threads(t)
	big := int(gib65)
	for i := range 40 {
		path := filepath.Join(dir, strconv.Itoa(i))
		r, err := Open(path, Options{Size: big + i*4096, Mode: ModeRobust})
		require.NoError(t, err)
		require.NoError(t, r.place(0, region.KindMutex, 0))
		_, err = r.ownerFor(0)
		require.NoError(t, err, "cycle %d", i)
		require.NoError(t, r.Close())
		os.Remove(path)
	}
	grew := threads(t) - th0
	t.Logf("40 sizes of region: threads +%d", grew)
	assert.LessOrEqual(t, grew, 8, "a pool, and its thread, per size")
}

// A range a closed region left stays in quarantine when a mapping too large
// for its arena passes: the small region opened after gets other addresses.
func TestQuarantineSurvivesLargeOpen(t *testing.T) {
	if !robust.Available() {
		t.Skip("no robust lists here")
	}
	if unsafe.Sizeof(uintptr(0)) < 8 {
		t.Skip("needs a 64-bit address space")
	}
	dir := shmTempDir(t)
	addr := func(r *Region) uintptr {
		b, err := r.Bytes(0, r.Size())
		require.NoError(t, err)
		return uintptr(unsafe.Pointer(&b[0]))
	}
	a, err := Open(filepath.Join(dir, "a"), Options{Size: 1 << 20, Mode: ModeRobust})
	require.NoError(t, err)
	pa := addr(a)
	require.NoError(t, a.Close())
	big := int(gib65)
	b, err := Open(filepath.Join(dir, "b"), Options{Size: big, Mode: ModeRobust})
	require.NoError(t, err)
	defer b.Close()
	c, err := Open(filepath.Join(dir, "c"), Options{Size: 1 << 20, Mode: ModeRobust})
	require.NoError(t, err)
	defer c.Close()
	assert.NotEqual(t, pa, addr(c), "a closed region's range went to another region at once")
}
