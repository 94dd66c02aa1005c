//go:build linux

package main

import (
	"os"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	cliMain()
	// The demo re-executes its own binary as workers: here, the test binary.
	if len(os.Args) > 1 && (os.Args[1] == demoWorkerCmd || os.Args[1] == tortureWorkerCmd) {
		time.AfterFunc(60*time.Second, func() { os.Exit(3) })
		run := demoWorker
		if os.Args[1] == tortureWorkerCmd {
			run = tortureWorker
		}
		if err := run(os.Args[2:]); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestDemo(t *testing.T) {
	done := make(chan error, 1)
	go func() { done <- demo([]string{"-kills", "3"}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("demo did not finish within 60 s")
	}
}

func TestTorture(t *testing.T) {
	done := make(chan error, 1)
	go func() { done <- tortureCmd([]string{"-duration", "2s", "-procs", "3", "-kill-rate", "25"}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("torture did not finish within 60 s")
	}
}
