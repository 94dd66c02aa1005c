//go:build linux

package shmlock_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// The library as a guest of its host: tests of the program and the machine
// around it, not of the protocol.

// runRole runs the test binary bin (a copy another user may execute, or
// os.Args[0]) in role with args, as cred if not nil, under a watchdog, and
// returns what it printed.
func runRole(t *testing.T, bin string, cred *syscall.Credential, role string, args ...string) (string, error) {
	t.Helper()
	h := proctest.New(t, 90*time.Second)
	cmd := proctest.CommandOf(bin, role, args...)
	cmd.SysProcAttr.Credential = cred
	c := h.Start(cmd)
	out := c.Wait(t, 60*time.Second)
	return out, c.Err
}

// lockAsUser: args path. Opens the existing region at path with the default
// options, as a user would, and locks and unlocks its Mutex at 0.
func lockAsUser(args []string) int {
	r, err := shm.Open(args[0], shm.Options{})
	if err != nil {
		fmt.Printf("open: permission=%v: %v\n", errors.Is(err, fs.ErrPermission), err)
		return 0
	}
	defer r.Close()
	mu, err := shmlock.New(r, 0)
	if err != nil {
		fmt.Println("new:", err)
		return 1
	}
	g, err := mu.Acquire(context.Background())
	if err != nil {
		fmt.Println("acquire:", err)
		return 1
	}
	g.Commit()
	g.Release()
	fmt.Printf("locked as uid %d\n", os.Getuid())
	return 0
}

// sysctl sets a sysctl under /proc/sys for the test, and restores it after.
func sysctl(t *testing.T, name, value string) {
	t.Helper()
	p := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	old, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("sysctl %s: %v", name, err)
	}
	require.NoError(t, os.WriteFile(p, []byte(value), 0o644))
	t.Cleanup(func() { os.WriteFile(p, old, 0o644) })
}

// executableCopy copies the test binary into a directory every user may
// enter, and returns the copy's path and that directory.
func executableCopy(t *testing.T) (bin, dir string) {
	dir, err := os.MkdirTemp("", "shmlock-bin-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	exe, err := os.ReadFile(os.Args[0])
	require.NoError(t, err)
	bin = filepath.Join(dir, "test.bin")
	require.NoError(t, os.WriteFile(bin, exe, 0o755))
	return bin, dir
}

// A second user opens and locks a region another user created in a sticky,
// world-writable directory such as /dev/shm, with Open's default options,
// whatever fs.protected_regular says (at 1 or 2 an open with O_CREAT of
// another user's file there fails, even at mode 0666); a region made for a
// group admits that group's users, and refuses others with a permission
// error that names the file's owner and mode.
func TestSecondUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: to run children as another user, and to set fs.protected_regular")
	}
	bin, _ := executableCopy(t)
	// A sticky, world-writable directory, as /dev/shm is, owned by a
	// third user: a file of its owner's would be exempt (fs/namei.c,
	// may_create_in_sticky), as root's are in /dev/shm, and those of
	// ordinary users are not.
	sticky := shmTempDir(t)
	require.NoError(t, os.Chmod(sticky, fs.ModePerm|fs.ModeSticky))
	require.NoError(t, os.Chown(sticky, 12345, 12345))
	const gid = 4242
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	member := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{gid}}
	for _, pr := range []string{"0", "1", "2"} {
		t.Run("protected_regular="+pr, func(t *testing.T) {
			sysctl(t, "fs.protected_regular", pr)
			for _, c := range []struct {
				name  string
				opt   shm.Options
				cred  *syscall.Credential
				admit bool
			}{
				{"0666", shm.Options{Perm: 0o666}, nobody, true},
				{"0660-group-member", shm.Options{Perm: 0o660, Group: gid}, member, true},
				{"0660-group-other", shm.Options{Perm: 0o660, Group: gid}, nobody, false},
			} {
				path := filepath.Join(sticky, pr+"-"+c.name)
				c.opt.Size = 4096
				r, err := shm.Open(path, c.opt)
				require.NoError(t, err)
				defer r.Close()
				fi, err := os.Stat(path)
				require.NoError(t, err)
				assert.Equal(t, c.opt.Perm, fi.Mode().Perm(), "the mode, exactly")
				if c.opt.Group != 0 {
					assert.EqualValues(t, gid, fi.Sys().(*syscall.Stat_t).Gid, "the group asked for")
				}
				out, err := runRole(t, bin, c.cred, "lock-as-user", path)
				require.NoError(t, err, out)
				if c.admit {
					assert.Contains(t, out, "locked as uid 65534", "%s: %s", c.name, out)
				} else {
					assert.Contains(t, out, "open: permission=true", "%s: %s", c.name, out)
					assert.Contains(t, out, "owned by uid 0 (root), group 4242, mode -rw-rw----", out)
					assert.Equal(t, 1, strings.Count(out, path), "the path once: %s", out)
				}
			}
		})
	}
}

// shmTempDir returns a temporary directory on /dev/shm (tmpfs), removed at the
// end of the test.
func shmTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp(shm.Dir, "shmtest-")
	if err != nil {
		t.Skipf("no %s: %v", shm.Dir, err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fullFS: args dir. On the full file system at dir, where the region dir/r
// exists: every step that needs storage fails with an error, and nothing
// dies of SIGBUS. It prints a line a step.
func fullFS(args []string) int {
	dir := args[0]
	report := func(step string, err error) {
		fmt.Printf("%s: nospace=%v enospc=%v: %v\n", step, errors.Is(err, shm.ErrNoSpace), errors.Is(err, syscall.ENOSPC), err)
	}
	_, err := shm.Open(filepath.Join(dir, "new"), shm.Options{Size: 4096})
	report("create", err)
	_, err = os.Stat(filepath.Join(dir, "new"))
	fmt.Printf("a failed create leaves its file: %v\n", err == nil)
	opened := 0
	for range 40 {
		r, err := shm.Open(filepath.Join(dir, "r"), shm.Options{})
		if err != nil {
			report("attach", err)
			break
		}
		defer r.Close()
		opened++
	}
	fmt.Printf("attached %d times\n", opened)
	r, err := shm.Open(filepath.Join(dir, "r"), shm.Options{})
	if err != nil {
		report("open", err)
		return 1
	}
	_, err = shmlock.New(r, 64<<10)
	report("mutex", err)
	_, err = seqlock.NewSeqLock(r, 72<<10, 64)
	report("seqlock", err)
	_, err = seqlock.NewRecord(r, 80<<10, 64)
	report("record", err)
	_, err = r.Bytes(96<<10, 4096)
	report("bytes", err)
	ro, err := shm.OpenReadOnly(filepath.Join(dir, "r"))
	if err != nil {
		report("open read-only", err)
		return 1
	}
	s, err := shmlock.Inspect(ro, 100<<10)
	fmt.Printf("inspect a hole: held=%v err=%v\n", s.Held, err)
	fmt.Println("done")
	return 0
}

// A full file system (a container's /dev/shm) is an error at Open, New and
// the seqlock constructors, never a SIGBUS: the library allocates what it
// writes before it first touches it. The test mounts a 256 KiB tmpfs, makes
// a region on it, fills it, and has a child try every step that needs
// storage.
func TestFullFilesystem(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	r, err := shm.Open(filepath.Join(dir, "r"), shm.Options{Size: 128 << 10})
	require.NoError(t, err)
	defer r.Close()
	f, err := os.Create(filepath.Join(dir, "filler"))
	require.NoError(t, err)
	for {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			break
		}
	}
	f.Close()

	out, err := runRole(t, os.Args[0], nil, "full-fs", dir)
	t.Logf("%s", out)
	require.NoError(t, err, "the child died: %s", out)
	assert.Contains(t, out, "done")
	assert.Contains(t, out, "a failed create leaves its file: false")
	assert.Contains(t, out, "attached 40 times", "attaching writes only the table, allocated when the region was made")
	for _, step := range []string{"create", "mutex", "seqlock", "record", "bytes"} {
		assert.Contains(t, out, step+": nospace=true enospc=true", step)
	}
	assert.Contains(t, out, "tmpfs at "+dir, "the error names the file system")
	assert.Contains(t, out, "inspect a hole: held=false err=<nil>")
}

// closedPanic runs f and returns the error it panicked with, or nil.
func closedPanic(f func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err, _ = v.(error)
			if err == nil {
				err = fmt.Errorf("panic with %v", v)
			}
		}
	}()
	f()
	return nil
}

// Every use of a lock or record after its region was closed is an error that
// matches shm.ErrClosed and fs.ErrClosed (a panic with one, from the methods
// that return no error), never a fault of the unmapped memory.
func TestUseAfterClose(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		r, err := shm.Open(filepath.Join(t.TempDir(), "r"), shm.Options{Size: 64 << 10, Mode: mode})
		require.NoError(t, err)
		mu, err := shmlock.New(r, 0)
		require.NoError(t, err)
		held, err := shmlock.New(r, 64)
		require.NoError(t, err)
		held.Lock()
		sl, err := seqlock.NewSeqLock(r, 4096, 64)
		require.NoError(t, err)
		rec, err := seqlock.NewRecord(r, 8192, 64)
		require.NoError(t, err)
		w, err := sl.Write(context.Background())
		require.NoError(t, err)
		rw, err := rec.Write(context.Background())
		require.NoError(t, err)
		require.NoError(t, r.Close())

		buf := make([]byte, 64)
		closed := func(what string, err error) {
			t.Helper()
			assert.ErrorIs(t, err, shm.ErrClosed, what)
			assert.ErrorIs(t, err, fs.ErrClosed, what)
			assert.NotContains(t, fmt.Sprint(err), "fault", what)
		}
		closed("Lock", closedPanic(mu.Lock))
		closed("Unlock", closedPanic(held.Unlock))
		closed("TryLock", closedPanic(func() { mu.TryLock() }))
		closed("TryAcquire", closedPanic(func() { mu.TryAcquire() }))
		closed("Inspect", closedPanic(func() { mu.Inspect() }))
		_, err = mu.Acquire(context.Background())
		closed("Acquire", err)
		closed("Break", mu.Break(1))
		_, err = shmlock.Inspect(r, 0)
		closed("Inspect", err)
		_, err = shmlock.New(r, 128)
		closed("New", err)
		closed("SeqLock.Read", sl.Read(buf))
		_, err = sl.Write(context.Background())
		closed("SeqLock.Write", err)
		closed("Writer.Store", w.Store(buf))
		closed("Writer.StoreAt", w.StoreAt(0, buf[:8]))
		closed("Writer.Load", w.Load(buf))
		closed("Writer.Release", closedPanic(w.Release))
		closed("Record.Read", rec.Read(buf))
		_, err = rec.Write(context.Background())
		closed("Record.Write", err)
		closed("Writer.Store (Record)", rw.Store(buf))
		closed("Writer.Release (Record)", closedPanic(rw.Release))
		_, err = seqlock.NewRecord(r, 16384, 64)
		closed("NewRecord", err)
		_, err = r.Bytes(0, 8)
		closed("Bytes", err)
		closed("Check", region.Of(r).Check())
		closed("Attaches", closedPanic(func() { region.Of(r).Attaches() }))
		closed("Created", closedPanic(func() { region.Of(r).Created() }))
		assert.Equal(t, shm.Unverifiable, region.Of(r).Probe(region.Of(r).ID()).(shm.Holder).State, "a probe after Close licenses no recovery")
		assert.Empty(t, r.Attachments())
		assert.Empty(t, region.Of(r).Placements())
	})
}

// Close wakes the goroutines that wait for a lock or a record of the region,
// and they return ErrClosed (Lock panics with it); Close waits for them, so
// none touches the memory once it is unmapped. The waiters' probes are half
// a minute apart: only Close's wake ends their sleep in time. One more
// waiter is stopped in its loop, past its check of Close, until 100 ms after
// Close began: Close returns only after it does.
func TestCloseWakesWaiters(t *testing.T) {
	slowProbes(t)
	inModes(t, func(t *testing.T, mode shm.Mode) {
		r, err := shm.Open(filepath.Join(t.TempDir(), "r"), shm.Options{Size: 64 << 10, Mode: mode})
		require.NoError(t, err)
		mu, err := shmlock.New(r, 0)
		require.NoError(t, err)
		sl, err := seqlock.NewSeqLock(r, 4096, 64)
		require.NoError(t, err)
		mu.Lock()
		w, err := sl.Write(context.Background()) // the sequence stays odd
		require.NoError(t, err)
		_ = w
		type result struct {
			err error
			at  time.Time
		}
		results := make(chan result, 4)
		go func() { _, err := mu.Acquire(context.Background()); results <- result{err, time.Now()} }()
		go func() { err := closedPanic(mu.Lock); results <- result{err, time.Now()} }()
		go func() { err := sl.Read(make([]byte, 64)); results <- result{err, time.Now()} }()
		time.Sleep(50 * time.Millisecond) // all three wait
		stopped, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		shmlock.SetWaitHook(func() { once.Do(func() { close(stopped); <-release }) })
		defer shmlock.SetWaitHook(nil)
		go func() { _, err := mu.Acquire(context.Background()); results <- result{err, time.Now()} }()
		<-stopped
		start := time.Now()
		go func() { time.Sleep(100 * time.Millisecond); close(release) }()
		require.NoError(t, r.Close())
		closed := time.Now()
		t.Logf("%v: Close returned in %v", mode, closed.Sub(start))
		assert.Less(t, closed.Sub(start), time.Second, "Close waited for a waiter's own timeout")
		assert.Greater(t, closed.Sub(start), 100*time.Millisecond, "Close did not wait for the stopped waiter")
		for range 4 {
			select {
			case res := <-results:
				assert.ErrorIs(t, res.err, shm.ErrClosed)
				assert.False(t, res.at.After(closed), "a waiter returned %v after Close did", res.at.Sub(closed))
			case <-time.After(time.Second):
				t.Fatal("a waiter was not woken by Close")
			}
		}
	})
}

// probeThenWait: args path. Gives up on the Mutex at 0 after 300 ms and says
// what it found of the holder, then waits for it for up to 20 s and says
// whether it was told of a death.
func probeThenWait(args []string) int {
	r, err := shm.Open(args[0], shm.Options{})
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	mu, err := shmlock.New(r, 0)
	if err != nil {
		fmt.Println("new:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = mu.Acquire(ctx)
	cancel()
	var held *shmlock.HeldError
	if !errors.As(err, &held) {
		fmt.Println("not held:", err)
		return 1
	}
	fmt.Printf("holder %s: %s\n", held.Holder.State, held.Holder.Reason)
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := mu.Acquire(ctx)
	if err != nil {
		fmt.Println("acquire:", err)
		return 1
	}
	fmt.Printf("recovered=%v\n", g.Recovered())
	g.Commit()
	g.Release()
	return 0
}

// Holders and waiters where the probe sees least: a holder in a PID namespace
// of its own, or in a user namespace and a PID namespace; a waiter in those;
// a waiter run as another user under hidepid=2, to which /proc shows no
// process but its own. In each, and in both modes, a live holder is judged
// alive and not robbed, and once it is killed the waiter takes over, told.
func TestForeignHoldersAndWaiters(t *testing.T) {
	unshare := unshareOrSkip(t)
	if os.Getuid() != 0 {
		t.Skip("needs root: namespaces, a procfs mount, another user")
	}
	bin, _ := executableCopy(t)
	userNS := []string{unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"}
	pidNS := []string{unshare, "--pid", "--fork", "--mount-proc", "--kill-child"}
	hidden := []string{unshare, "--mount", "--propagation", "private", "--fork", "sh", "-c",
		`mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid 65534 --regid 65534 --clear-groups "$0" "$@"`}
	inModes(t, func(t *testing.T, mode shm.Mode) {
		for _, c := range []struct {
			name           string
			holder, waiter []string
		}{
			{"holder in a PID namespace", pidNS, nil},
			{"holder in a user and a PID namespace", userNS, nil},
			{"waiter in a user and a PID namespace", nil, userNS},
			{"waiter as another user under hidepid", nil, hidden},
		} {
			t.Run(c.name, func(t *testing.T) {
				path := fmt.Sprintf("%s/shmlock-test-%d-foreign", shm.Dir, os.Getpid())
				os.Remove(path)
				r, err := shm.Open(path, shm.Options{Size: shmlock.Size, Slots: 16, Mode: mode, Perm: 0o666})
				require.NoError(t, err)
				defer func() { r.Close(); os.Remove(path) }()
				hold := startHolder(t, path, 1, "sigkill", c.holder...)
				cmd := proctest.CommandOf(bin, "probe-then-wait", path)
				if len(c.waiter) > 0 {
					require.NoError(t, proctest.Via(cmd, c.waiter...))
				}
				wait := proctest.New(t, 60*time.Second).Start(cmd)
				proctest.Eventually(t, 20*time.Second, "the waiter never gave up", func() bool {
					select {
					case <-wait.Done():
						return true
					default:
						return strings.Contains(wait.Output(), "holder ")
					}
				})
				require.Contains(t, wait.Output(), "holder alive", "a live holder judged otherwise: %s", wait.Output())
				time.Sleep(20 * time.Millisecond) // it waits again
				hold.Kill()
				out := wait.Wait(t, 30*time.Second)
				require.NoError(t, wait.Err, out)
				t.Logf("%s", strings.TrimSpace(out))
				assert.Contains(t, out, "recovered=true")
			})
		}
	})
}

// A waiter that finds the lock free, or its holder dead, once Close has begun
// does not take it: it returns ErrClosed and leaves the lock free with the
// news of the death, for the next taker. The waiter is stopped in its loop,
// past its check of Close, from the holder's death until Close has begun.
func TestCloseDuringTakeover(t *testing.T) {
	inModes(t, func(t *testing.T, mode shm.Mode) {
		path := fmt.Sprintf("%s/shmlock-test-%d-takeover", shm.Dir, os.Getpid())
		os.Remove(path)
		defer os.Remove(path)
		r, err := shm.Open(path, shm.Options{Size: shmlock.Size, Slots: 16, Mode: mode})
		require.NoError(t, err)
		mu, err := shmlock.New(r, 0)
		require.NoError(t, err)
		hold := startHolder(t, path, 1, "sigkill")
		got := make(chan error, 1)
		go func() {
			g, err := mu.Acquire(context.Background())
			if err == nil {
				g.Release()
				err = errors.New("acquired")
			}
			got <- err
		}()
		time.Sleep(50 * time.Millisecond) // it waits
		stopped, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		shmlock.SetWaitHook(func() { once.Do(func() { close(stopped); <-release }) })
		defer shmlock.SetWaitHook(nil)
		hold.Kill()
		<-stopped // woken, by the kernel or its probe, and stopped
		closed := make(chan error, 1)
		go func() { closed <- r.Close() }()
		time.Sleep(50 * time.Millisecond) // Close has begun, and waits
		close(release)
		require.NoError(t, <-closed)
		assert.ErrorIs(t, <-got, shm.ErrClosed, "a waiter took the lock after Close began")

		again, err := shm.Open(path, shm.Options{})
		require.NoError(t, err)
		defer again.Close()
		mu2, err := shmlock.New(again, 0)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g, err := mu2.Acquire(ctx)
		require.NoError(t, err)
		assert.True(t, g.Recovered(), "the holder's death was lost")
		g.Commit()
		g.Release()
	})
}
