//go:build linux

package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/internal/proctest"
)

func TestMain(m *testing.M) {
	proctest.DispatchFunc(func(role string, args []string) int { return runChild(role, strings.Join(args, " ")) })
	os.Exit(m.Run())
}

// child starts the test binary bin (os.Args[0], or a copy another user may
// run) in role with arg, as cred if not nil, with extra environment, as a
// child of a harness of its own: killed at the end of the test, or by the
// watchdog.
func child(t *testing.T, bin string, cred *syscall.Credential, role, arg string, env ...string) *proctest.Child {
	t.Helper()
	cmd := proctest.CommandOf(bin, role, arg)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr.Credential = cred
	return proctest.New(t, 2*time.Minute).Start(cmd)
}

// runRole runs a child (see child) to its end, and returns its output and
// its exit status.
func runRole(t *testing.T, bin string, cred *syscall.Credential, role, arg string, env ...string) (string, error) {
	t.Helper()
	c := child(t, bin, cred, role, arg, env...)
	out := c.Wait(t, time.Minute)
	return out, c.Err
}

func runChild(role, arg string) int {
	switch role {
	case "race-open":
		// arg: path,start-unix-ns,index. All open at the same instant.
		f := strings.Split(arg, ",")
		path := f[0]
		start, _ := strconv.ParseInt(f[1], 10, 64)
		index, _ := strconv.Atoi(f[2])
		time.Sleep(time.Until(time.Unix(0, start)))
		r, err := Open(path, Options{Size: 4096, Slots: 16})
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		created, creator := r.created()
		// Leave a mark a second initialisation would wipe out.
		b, _ := r.Bytes(index*8, 8)
		binary.NativeEndian.PutUint64(b, uint64(os.Getpid()))
		fmt.Printf("%d %d %d\n", created.UnixNano(), creator, slotOf(r.ownerID()))
		return 0
	case "touch-truncated":
		// arg: path[,panic]. Map, wait for the truncation, touch.
		path, mode, _ := strings.Cut(arg, ",")
		r, err := Open(path, Options{})
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		b, err := r.Bytes(r.Size()-1, 1)
		if err != nil {
			fmt.Println("bytes:", err)
			return 1
		}
		fmt.Println("mapped")
		for r.check("check") == nil {
			time.Sleep(time.Millisecond)
		}
		fmt.Println("check:", r.check("check"))
		if mode == "panic" {
			debug.SetPanicOnFault(true)
			defer func() { fmt.Println("recovered:", recover()) }()
		}
		b[0] = 1
		return 0
	case "attach":
		// arg: path. Attach, say our owner ID, and stay until killed.
		r, err := Open(arg, Options{})
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		fmt.Printf("id=%d\n", r.ownerID())
		select {}
	case "attach-detach":
		// arg: path. Attach, say our owner ID, detach a moment later, and
		// live on until killed.
		r, err := Open(arg, Options{})
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		fmt.Printf("id=%d\n", r.ownerID())
		time.Sleep(200 * time.Millisecond)
		r.Close()
		fmt.Println("detached")
		select {}
	case "attach-tid":
		// arg: path. Attach, link line 0, say its thread ID (and how many
		// threads this process has), and stay until killed.
		if n, _ := strconv.Atoi(os.Getenv("SHM_TEST_MAX_THREADS")); n > 0 {
			debug.SetMaxThreads(n)
		}
		if n, _ := strconv.Atoi(os.Getenv("SHM_TEST_THREAD_ROOM")); n > 0 {
			tasks, _ := os.ReadDir("/proc/self/task")
			debug.SetMaxThreads(len(tasks) + n)
		}
		if n, err := strconv.Atoi(os.Getenv("SHM_TEST_NPROC_ROOM")); err == nil {
			// RLIMIT_NPROC: this user's tasks now, and n more.
			used := userTasks()
			lim := syscall.Rlimit{Cur: uint64(used + n), Max: uint64(used + n)}
			if err := syscall.Setrlimit(6 /* RLIMIT_NPROC */, &lim); err != nil {
				fmt.Println("setrlimit:", err)
				return 1
			}
		}
		r, err := Open(arg, Options{})
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		tid, err := r.ownerFor(0)
		if err != nil {
			fmt.Println("owner:", err)
			return 1
		}
		fmt.Printf("id=%d\n", tid)        // as attachedAs reads it
		time.Sleep(10 * time.Millisecond) // threads that took IDs are gone
		tasks, _ := os.ReadDir("/proc/self/task")
		fmt.Printf("threads=%d\n", len(tasks))
		select {}
	case "close-truncated":
		// arg: path. A robust region with locks on two pages, the file
		// truncated by a page under the mapping, then Close.
		r, err := Open(arg, Options{Size: 2 * pageSize, Mode: ModeRobust})
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		r.ownerFor(0)
		r.ownerFor(pageSize)
		fi, _ := os.Stat(arg)
		os.Truncate(arg, fi.Size()-pageSize)
		fmt.Println("check:", r.check("check"))
		fmt.Println("closed:", r.Close())
		return 0
	case "write-read-only":
		// arg: path. Writing through a read-only mapping faults.
		r, err := OpenReadOnly(arg)
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		debug.SetPanicOnFault(true)
		defer func() { fmt.Println("recovered:", recover()) }()
		b, _ := r.Bytes(0, 1)
		b[0] = 1
		return 0
	case "open-as-nobody":
		_, err := Open(arg, Options{})
		fmt.Println("permission:", errors.Is(err, fs.ErrPermission), err)
		return 0
	}
	if f, ok := hostRoles[role]; ok {
		return f(arg)
	}
	return 2
}

func tempPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "region")
}

func TestCreateOpen(t *testing.T) {
	path := tempPath(t)
	a, err := Open(path, Options{Size: 1000, Mode: ModeProbe})
	require.NoError(t, err)
	defer a.Close()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o600), fi.Mode().Perm(), "mode 0600 unless asked")
	assert.Equal(t, 1000, a.Size())
	assert.Equal(t, DefaultSlots, a.numSlots())

	b, err := Open(path, Options{})
	require.NoError(t, err)
	defer b.Close()
	assert.NotEqual(t, a.ownerID(), b.ownerID(), "two attachments, two owner IDs")
	assert.NotEqual(t, slotOf(a.ownerID()), slotOf(b.ownerID()))

	x, _ := a.Bytes(10, 5)
	copy(x, "hello")
	y, _ := b.Bytes(10, 5)
	assert.Equal(t, "hello", string(y), "both see one memory")

	// Slots are claimed round-robin; a closed attachment is dead at once
	// (its liveness lock is free), and once its slot comes round again it
	// is claimed with another incarnation.
	slot, id := slotOf(b.ownerID()), b.ownerID()
	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")
	h := a.probe(id)
	assert.Equal(t, Dead, h.State, h.String())
	assert.Contains(t, h.Reason, "liveness lock is free")
	c, err := Open(path, Options{})
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, slot+1, slotOf(c.ownerID()), "round-robin: the next slot, not the one just freed")
	c2, err := Open(path, Options{})
	require.NoError(t, err)
	defer c2.Close()
	for slotOf(c2.ownerID()) != slotOf(id) {
		c2.Close()
		c2, err = Open(path, Options{})
		require.NoError(t, err)
	}
	assert.NotEqual(t, id, c2.ownerID(), "same slot, another incarnation")
	h = a.probe(id)
	assert.Equal(t, Dead, h.State, h.String())
	assert.Contains(t, h.Reason, "claimed again")

	h = a.probe(c.ownerID())
	assert.Equal(t, Alive, h.State, h.String())
	assert.EqualValues(t, os.Getpid(), h.PID)
	assert.Equal(t, Alive, a.probe(a.ownerID()).State)
}

// The path is removed and created anew while an opener waits for the
// initialisation lock: the opener must attach to the new file, the one
// everybody else opens, not to the orphan it first opened.
func TestOpenRaceWithReplace(t *testing.T) {
	path := tempPath(t)
	first, err := Open(path, Options{Size: 64})
	require.NoError(t, err)
	defer first.Close()
	// Hold the initialisation lock, as a slow opener would.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	require.NoError(t, tryLockByte(int(f.Fd()), 0))
	done := make(chan *Region, 1)
	go func() {
		r, err := Open(path, Options{})
		assert.NoError(t, err)
		done <- r
	}()
	time.Sleep(50 * time.Millisecond) // it has opened the old file and waits
	require.NoError(t, os.Remove(path))
	second, err := Open(path, Options{Size: 64})
	require.NoError(t, err)
	defer second.Close()
	f.Close() // releases the lock on the orphan
	var r *Region
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Open never finished")
	}
	require.NotNil(t, r)
	defer r.Close()
	fi, _ := r.f.Stat()
	pi, _ := os.Stat(path)
	assert.True(t, os.SameFile(fi, pi), "attached to the file at the path")
	x, _ := second.Bytes(0, 1)
	x[0] = 7
	y, _ := r.Bytes(0, 1)
	assert.Equal(t, byte(7), y[0], "shares memory with the new region's users")
}

func TestPermExact(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	path := tempPath(t)
	r, err := Open(path, Options{Size: 64, Perm: 0o660})
	require.NoError(t, err)
	defer r.Close()
	fi, _ := os.Stat(path)
	assert.Equal(t, fs.FileMode(0o660), fi.Mode().Perm())
}

func TestBounds(t *testing.T) {
	r, err := Open(tempPath(t), Options{Size: 256})
	require.NoError(t, err)
	defer r.Close()
	for _, c := range [][2]int{{-1, 1}, {0, -1}, {0, 257}, {256, 1}, {250, 7}, {maxInt - 1, maxInt - 1}} {
		_, err := r.Bytes(c[0], c[1])
		assert.ErrorIs(t, err, ErrInvalid, "%v", c)
	}
	_, err = r.Bytes(256, 0)
	assert.NoError(t, err)
	for _, off := range []int{1, 8, 63, 256, 224} {
		_, err := r.lockLine(off)
		assert.ErrorIs(t, err, ErrInvalid, "line at %d", off)
	}
	l, err := r.lockLine(192)
	require.NoError(t, err)
	l[7] = 1
	b, _ := r.Bytes(248, 8)
	assert.Equal(t, byte(1), b[0])
}

func TestProcessTableFull(t *testing.T) {
	path := tempPath(t)
	var open []*Region
	defer func() {
		for _, r := range open {
			r.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		r, err := Open(path, Options{Size: 64, Slots: 3})
		require.NoError(t, err)
		open = append(open, r)
	}
	_, err := Open(path, Options{})
	assert.ErrorIs(t, err, ErrFull)
	require.NoError(t, open[1].Close())
	r, err := Open(path, Options{})
	require.NoError(t, err, "a closed attachment's slot is free again")
	open = append(open, r)
}

// header returns a valid header for slots and dataSize.
func header(slots, dataSize int) []byte {
	h := make([]byte, headerSizeFor(slots)+dataSize)
	ne := binary.NativeEndian
	copy(h, magicReady)
	ne.PutUint32(h[offVersion:], Version)
	ne.PutUint32(h[offHeaderSize:], uint32(headerSizeFor(slots)))
	ne.PutUint64(h[offDataSize:], uint64(dataSize))
	ne.PutUint32(h[offSlots:], uint32(slots))
	ne.PutUint32(h[offByteOrder:], byteOrderMark)
	ne.PutUint32(h[offMode:], uint32(ModeProbe))
	return h
}

func TestBadFiles(t *testing.T) {
	ne := binary.NativeEndian
	set32 := func(off int, v uint32) func([]byte) []byte {
		return func(h []byte) []byte { ne.PutUint32(h[off:], v); return h }
	}
	for _, tc := range []struct {
		name   string
		edit   func([]byte) []byte
		opt    Options
		kind   error
		detail string
	}{
		{"valid", func(h []byte) []byte { return h }, Options{}, nil, ""},
		{"empty, no create", func(h []byte) []byte { return h[:0] }, Options{NoCreate: true}, ErrNotRegion, "empty"},
		{"short foreign file", func(h []byte) []byte { return []byte("hello\n") }, Options{}, ErrNotRegion, "without the region magic"},
		{"short region prefix", func(h []byte) []byte { return h[:20] }, Options{}, ErrTruncated, "shorter than the 64-byte header"},
		{"wrong magic", func(h []byte) []byte { copy(h, "GARBAGE!"); return h }, Options{}, ErrNotRegion, `magic is "GARBAGE!"`},
		{"zeroed header", func(h []byte) []byte { clear(h[:64]); return h }, Options{}, ErrNotRegion, "magic"},
		{"future version", set32(offVersion, Version+1), Options{}, ErrVersion, fmt.Sprintf("layout version %d;", Version+1)},
		{"version 0", set32(offVersion, 0), Options{}, ErrVersion, "layout version 0"},
		{"other byte order", set32(offByteOrder, 0x04030201), Options{}, ErrNotRegion, "byte order"},
		{"zero slots", set32(offSlots, 0), Options{}, ErrCorrupt, "0 slots"},
		{"too many slots", set32(offSlots, MaxSlots+1), Options{}, ErrCorrupt, "slots"},
		{"header size mismatch", set32(offHeaderSize, 64), Options{}, ErrCorrupt, "header size 64"},
		{"unknown mode", set32(offMode, 9), Options{}, ErrCorrupt, "mode 9"},
		{"mode 0", set32(offMode, 0), Options{}, ErrCorrupt, "mode 0"},
		{"probe region opened robust", func(h []byte) []byte { return h }, Options{Mode: ModeRobust}, ErrMode, "created in probe mode, and is asked for in robust mode"},
		{"robust region opened probe", set32(offMode, uint32(ModeRobust)), Options{Mode: ModeProbe}, ErrMode, "created in robust mode, and is asked for in probe mode"},
		{"mode out of range", func(h []byte) []byte { return h }, Options{Mode: 7}, ErrInvalid, "unknown mode 7"},
		{"truncated data", func(h []byte) []byte { return h[:len(h)-1] }, Options{}, ErrTruncated, "its header says"},
		{"extended file", func(h []byte) []byte { return append(h, 0) }, Options{}, ErrCorrupt, "its header says"},
		{"absurd data size", func(h []byte) []byte { ne.PutUint64(h[offDataSize:], 1<<63); return h }, Options{}, ErrCorrupt, "impossible"},
		{"smaller than asked", func(h []byte) []byte { return h }, Options{Size: 129}, ErrTooSmall, "128 bytes, 129 asked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempPath(t)
			require.NoError(t, os.WriteFile(path, tc.edit(header(4, 128)), 0o600))
			before, _ := os.ReadFile(path)
			r, err := Open(path, tc.opt)
			if tc.kind == nil {
				require.NoError(t, err)
				r.Close()
				return
			}
			require.Error(t, err)
			assert.Nil(t, r)
			assert.ErrorIs(t, err, tc.kind)
			var e *Error
			require.True(t, errors.As(err, &e))
			assert.Equal(t, path, e.Path)
			assert.Contains(t, err.Error(), path, "the error names the file")
			assert.Contains(t, err.Error(), tc.detail)
			after, _ := os.ReadFile(path)
			assert.Equal(t, before, after, "a refused file is left as it was")
		})
	}
}

func TestBadPaths(t *testing.T) {
	dir := t.TempDir()
	_, err := Open("", Options{Size: 64})
	assert.ErrorIs(t, err, ErrInvalid)
	_, err = Open("..", Options{Size: 64})
	assert.ErrorIs(t, err, ErrInvalid)

	target := filepath.Join(dir, "target")
	link := filepath.Join(dir, "link")
	require.NoError(t, os.WriteFile(target, []byte("precious"), 0o600))
	require.NoError(t, os.Symlink(target, link))
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer l.Close()
	// Every kind of file that is not a regular file is refused with
	// ErrNotRegion, saying what it is, with the path once; none is
	// changed, and none hangs Open.
	for _, c := range []struct{ path, kind string }{
		{dir, "a directory"},
		{link, "a symbolic link"},
		{fifo, "a FIFO"},
		{sock, "a UNIX socket"},
		{"/dev/null", "a character device"},
	} {
		done := make(chan error, 1)
		go func() { _, err := Open(c.path, Options{Size: 64}); done <- err }()
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Open hangs on %s", c.kind)
		}
		assert.ErrorIs(t, err, ErrNotRegion, c.kind)
		assert.Contains(t, fmt.Sprint(err), "it is "+c.kind)
		assert.Equal(t, 1, strings.Count(fmt.Sprint(err), c.path), "the path once: %v", err)
	}
	b, _ := os.ReadFile(target)
	assert.Equal(t, "precious", string(b))

	_, err = Open(filepath.Join(dir, "missing"), Options{NoCreate: true})
	assert.ErrorIs(t, err, fs.ErrNotExist)
	_, err = Open(filepath.Join(dir, "new"), Options{})
	assert.ErrorIs(t, err, ErrInvalid, "creating needs a size")
	_, err = Open(filepath.Join(dir, "new"), Options{Size: 64, Slots: MaxSlots + 1})
	assert.ErrorIs(t, err, ErrInvalid)

	p, err := resolve("cache")
	require.NoError(t, err)
	assert.Equal(t, "/dev/shm/cache", p, "a bare name lives in /dev/shm")
}

// A creator that died mid-initialisation leaves the "initialising" magic;
// the next opener initialises again instead of refusing the file forever.
func TestInterruptedInitialisation(t *testing.T) {
	path := tempPath(t)
	h := header(4, 128)
	copy(h, magicInit)
	ne := binary.NativeEndian
	ne.PutUint32(h[offVersion:], 0) // half written
	require.NoError(t, os.WriteFile(path, h[:100], 0o600))
	r, err := Open(path, Options{Size: 256})
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, 256, r.Size())
}

// Many processes open one new path at the same instant: one creates and
// initialises it, all attach to that one region.
func TestRacingOpeners(t *testing.T) {
	const n = 8
	path := tempPath(t)
	start := time.Now().Add(300 * time.Millisecond).UnixNano()
	h := proctest.New(t, 30*time.Second)
	kids := make([]*proctest.Child, n)
	for i := range kids {
		kids[i] = h.Spawn("race-open", fmt.Sprintf("%s,%d,%d", path, start, i))
	}
	seen := map[string]int{}
	for i, c := range kids {
		out := c.Wait(t, 30*time.Second)
		require.NoError(t, c.Err, "child %d: %s", i, out)
		f := strings.Fields(out)
		require.Len(t, f, 3, out)
		seen[f[0]+" "+f[1]]++
	}
	require.Len(t, seen, 1, "every opener saw the same creation: %v", seen)
	r, err := Open(path, Options{})
	require.NoError(t, err)
	defer r.Close()
	marks := 0
	for i := range n {
		b, _ := r.Bytes(i*8, 8)
		if binary.NativeEndian.Uint64(b) != 0 {
			marks++
		}
	}
	assert.Equal(t, n, marks, "no opener's mark was wiped by a second initialisation")
	assert.EqualValues(t, n+1, binary.NativeEndian.Uint64(r.m[offAttaches:]))
}

// A region truncated while mapped: Check says so; touching the lost pages
// stops the process with an explicit SIGBUS report, never silently, or
// panics recoverably under debug.SetPanicOnFault.
func TestTruncatedWhileMapped(t *testing.T) {
	for _, mode := range []string{"crash", "panic"} {
		t.Run(mode, func(t *testing.T) {
			path := tempPath(t)
			r, err := Open(path, Options{Size: 2 * pageSize})
			require.NoError(t, err)
			defer r.Close()
			c := child(t, os.Args[0], nil, "touch-truncated", path+","+mode)
			proctest.Eventually(t, 10*time.Second, "the child never mapped the region", func() bool {
				return strings.Contains(c.Output(), "mapped")
			})
			require.NoError(t, os.Truncate(path, pageSize))
			assert.ErrorIs(t, r.check("check"), ErrTruncated)
			_, err = r.Bytes(0, 8)
			assert.ErrorIs(t, err, ErrTruncated, "Bytes handed out bytes of a truncated file")
			got := c.Wait(t, 30*time.Second)
			err = c.Err
			assert.Contains(t, got, "check: shm: check "+path+": region file is truncated")
			if mode == "crash" {
				assert.Error(t, err)
				assert.Contains(t, got, "unexpected fault address")
				assert.Contains(t, got, "SIGBUS")
			} else {
				assert.NoError(t, err)
				assert.Contains(t, got, "recovered: runtime error")
			}
		})
	}
}

// A region file this user may not open: a typed permission error.
func TestNoPermission(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a child as another user")
	}
	dir, err := os.MkdirTemp("", "shm-perm")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	require.NoError(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "test.bin")
	exe, err := os.ReadFile(os.Args[0])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, exe, 0o755))
	path := filepath.Join(dir, "region")
	r, err := Open(path, Options{Size: 64}) // 0600, root's
	require.NoError(t, err)
	defer r.Close()
	out, err := runRole(t, bin, &syscall.Credential{Uid: 65534, Gid: 65534}, "open-as-nobody", path)
	require.NoError(t, err, out)
	assert.Contains(t, out, "permission: true")
	assert.Contains(t, out, path)
}
