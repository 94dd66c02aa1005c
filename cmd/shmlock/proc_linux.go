package main

import "syscall"

// childAttr makes a worker die with the demo, should the demo die first.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
