//go:build linux

// Package proctest runs test children: the test binary re-executed in a
// role, under a watchdog, so that a regression fails a test instead of
// hanging it.
package proctest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	roleEnv = "PROCTEST_ROLE"
	argsEnv = "PROCTEST_ARGS"
)

// Dispatch runs the role this process was started in, if any, and exits; call
// it first in TestMain. A child dies with its parent and after a minute in
// any case.
func Dispatch(roles map[string]func(args []string) int) {
	DispatchFunc(func(role string, args []string) int {
		f, ok := roles[role]
		if !ok {
			fmt.Fprintln(os.Stderr, "proctest: unknown role", role)
			return 2
		}
		return f(args)
	})
}

// DispatchFunc is Dispatch for a package whose roles are the cases of one
// function.
func DispatchFunc(run func(role string, args []string) int) {
	role := os.Getenv(roleEnv)
	if role == "" {
		return
	}
	time.AfterFunc(60*time.Second, func() {
		fmt.Fprintln(os.Stderr, "proctest: child watchdog fired")
		os.Exit(3)
	})
	os.Exit(run(role, strings.Fields(os.Getenv(argsEnv))))
}

// Harness owns a test's children and its watchdog.
type Harness struct {
	t        testing.TB
	mu       sync.Mutex
	children []*Child
}

// New returns a harness that kills every child, and fails the test, if the
// test runs longer than limit.
func New(t testing.TB, limit time.Duration) *Harness {
	h := &Harness{t: t}
	wd := time.AfterFunc(limit, func() {
		h.KillAll()
		t.Errorf("watchdog: test still running after %v; children killed", limit)
	})
	t.Cleanup(func() { wd.Stop(); h.KillAll() })
	return h
}

// Child is a test child.
type Child struct {
	cmd    *exec.Cmd
	out    Buffer
	done   chan struct{}
	Err    error // the exit status, once reaped
	reaped atomic.Bool
}

// Command returns the test binary, to be started in role with args (for
// benchmarks, which have no Harness, or to be changed before Start). It dies
// with its parent.
func Command(role string, args ...string) *exec.Cmd { return CommandOf(os.Args[0], role, args...) }

// CommandOf is Command for the test binary at bin: a copy of it that another
// user may run, say.
func CommandOf(bin, role string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role, argsEnv+"="+strings.Join(args, " "))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Via makes cmd run under a wrapper program, such as unshare with its
// flags: prefix[0] is looked up in PATH.
func Via(cmd *exec.Cmd, prefix ...string) error {
	path, err := exec.LookPath(prefix[0])
	if err != nil {
		return err
	}
	cmd.Args = append(append([]string{}, prefix...), cmd.Args...)
	cmd.Path = path
	return nil
}

// Spawn starts the test binary in role with args.
func (h *Harness) Spawn(role string, args ...string) *Child {
	h.t.Helper()
	return h.Start(Command(role, args...))
}

// Start starts cmd, made by Command or CommandOf and changed as the test
// needs (more environment, a wrapper, credentials), as a child of the
// harness: its output is collected, and the watchdog and the test's end
// kill it.
func (h *Harness) Start(cmd *exec.Cmd) *Child {
	h.t.Helper()
	c := &Child{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &c.out, &c.out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.children = append(h.children, c)
	h.mu.Unlock()
	return c
}

// Pid returns the child's process ID.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Output returns what the child printed so far.
func (c *Child) Output() string { return c.out.String() }

func (c *Child) reap() {
	if c.reaped.CompareAndSwap(false, true) {
		go func() { c.Err = c.cmd.Wait(); close(c.done) }()
	}
}

// Wait waits at most limit for the child to exit, and returns its output.
func (c *Child) Wait(t testing.TB, limit time.Duration) string {
	t.Helper()
	c.reap()
	select {
	case <-c.done:
	case <-time.After(limit):
		c.cmd.Process.Kill()
		<-c.done
		t.Fatalf("child %d (%s) did not finish within %v; output:\n%s", c.Pid(), c.role(), limit, c.out.String())
	}
	return c.out.String()
}

// role returns the role and arguments the child was started in.
func (c *Child) role() string {
	var r []string
	for _, e := range c.cmd.Env {
		if strings.HasPrefix(e, roleEnv+"=") || strings.HasPrefix(e, argsEnv+"=") {
			r = append(r, e)
		}
	}
	return strings.Join(r, " ")
}

// Done is closed once the child has exited and been reaped (by Wait or
// Kill).
func (c *Child) Done() <-chan struct{} { c.reap(); return c.done }

// Kill SIGKILLs the child and reaps it.
func (c *Child) Kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.reap()
	<-c.done
}

// KillAll kills and reaps every child.
func (h *Harness) KillAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.children {
		c.Kill()
	}
}

// Eventually waits at most limit for cond, and fails the test otherwise.
func Eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Deaths are the ways Die ends a process.
var Deaths = []string{"sigkill", "self-kill", "exit", "panic", "exec"}

// Die ends this process as how says, once it has read a line from stdin
// (the parent's signal): "sigkill" waits for the parent to SIGKILL it,
// "self-kill" SIGKILLs itself, "exit" calls os.Exit(0), "panic" panics
// unrecovered, and "exec" lives on as /bin/sleep, another program.
func Die(how string) {
	bufio.NewReader(os.Stdin).ReadString('\n')
	switch how {
	case "self-kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "exit":
		os.Exit(0)
	case "panic":
		panic("an unrecovered panic while holding")
	case "exec":
		syscall.Exec("/bin/sleep", []string{"sleep", "30"}, os.Environ())
	}
	select {} // "sigkill": the parent kills us
}

// Buffer collects a child's output; it may be read while the child writes.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
