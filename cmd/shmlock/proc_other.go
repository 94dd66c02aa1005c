//go:build !linux

package main

import (
	"os"
	"syscall"
	"time"
)

// Regions need Linux; elsewhere the command builds, and every subcommand
// fails at shm.Open with shm.ErrUnsupported.

func childAttr() *syscall.SysProcAttr { return nil }

func monotonic() int64 { return time.Now().UnixNano() }

func stop(p *os.Process) {}
func cont(p *os.Process) {}
