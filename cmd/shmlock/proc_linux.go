package main

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// childAttr makes a worker die with the demo, should the demo die first.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// monotonic is CLOCK_MONOTONIC, which every process of the machine shares.
func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// stop and cont stop a process and let it go on.
func stop(p *os.Process) { p.Signal(syscall.SIGSTOP) }
func cont(p *os.Process) { p.Signal(syscall.SIGCONT) }
