//go:build linux

package bench

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The control words of peerEnv.ctl.
const (
	ctlHeld = iota
	ctlReady
	ctlAcquired
	ctlReadyN
	ctlGo
	ctlCPU
	// BenchmarkRecoveryWaiters: waiters that got the lock; the signal
	// to a recover-hold-unmap holder.
	ctlDone  = ctlGo
	ctlUnmap = ctlCPU
)

// BenchmarkRecovery: a holder process is SIGKILLed while a waiter process is
// blocked in Lock; reports the time from the kill to the waiter's acquisition
// (median and max over b.N kills). A peer that never hands the lock over
// (naivespin) is reported as wedged.
func BenchmarkRecovery(b *testing.B) {
	for _, name := range peerNames {
		if name == "syncmutex" {
			continue // one process only
		}
		b.Run(name, func(b *testing.B) {
			e := newPeerEnv(b)
			var lat []time.Duration
			wedged := 0
			for range b.N {
				for i := range e.ctl {
					atomic.StoreUint64(&e.ctl[i], 0)
				}
				holder := child(b, "recover-hold", e.path, name)
				waitFor(b, &e.ctl[ctlHeld])
				waiter := child(b, "recover-wait", e.path, name)
				waitFor(b, &e.ctl[ctlReady])
				time.Sleep(20 * time.Millisecond) // let it block in Lock
				killed := monotonic()
				holder.Process.Kill()
				holder.Wait()
				deadline := time.Now().Add(time.Second)
				for atomic.LoadUint64(&e.ctl[ctlAcquired]) == 0 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Microsecond)
				}
				if at := atomic.LoadUint64(&e.ctl[ctlAcquired]); at != 0 {
					lat = append(lat, time.Duration(int64(at)-killed))
				} else {
					wedged++
				}
				waiter.Process.Kill()
				waiter.Wait()
				if wedged > 0 {
					break // the lock is lost for good
				}
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(wedged), "wedged")
			if len(lat) > 0 {
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-us")
				b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-us")
			}
		})
	}
}

// BenchmarkRecoveryWaiters: as BenchmarkRecovery, with 64 waiter processes
// asleep in Lock when the holder is killed. It reports the time from the kill
// to the first waiter's acquisition, and checks that every waiter then gets
// the lock once. shmlock-robust-unmapped is robust mode with a holder that
// unmapped its lock's page before it died: the kernel cannot mark the word,
// so the waiters' prober must find the death.
func BenchmarkRecoveryWaiters(b *testing.B) {
	const waiters = 64
	names := []string{"shmlock-robust-unmapped"}
	for _, name := range peerNames {
		if name != "syncmutex" && name != "naivespin" {
			names = append(names, name)
		}
	}
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			e := newPeerEnv(b)
			var lat []time.Duration
			for range b.N {
				lat = append(lat, recoverMany(b, e, name, waiters))
			}
			b.ReportMetric(0, "ns/op")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-us")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-us")
		})
	}
}

// recoverMany runs one kill of BenchmarkRecoveryWaiters and returns the time
// from the kill to the first acquisition.
func recoverMany(b *testing.B, e *peerEnv, name string, n int) time.Duration {
	for i := range e.ctl {
		atomic.StoreUint64(&e.ctl[i], 0)
	}
	holderRole, peerName := "recover-hold", name
	if name == "shmlock-robust-unmapped" {
		holderRole, peerName = "recover-hold-unmap", "shmlock-robust"
	}
	holder := child(b, holderRole, e.path, peerName)
	waitFor(b, &e.ctl[ctlHeld])
	ws := make([]*exec.Cmd, n)
	for i := range ws {
		ws[i] = child(b, "recover-waitn", e.path, peerName)
	}
	defer func() {
		for _, w := range ws {
			w.Process.Kill()
			w.Wait()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for atomic.LoadUint64(&e.ctl[ctlReadyN]) < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatal("the waiters never got ready")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let them all sleep in Lock
	killed := monotonic()
	if holderRole == "recover-hold-unmap" {
		atomic.StoreUint64(&e.ctl[ctlUnmap], 1)
		holder.Wait()
		killed = int64(atomic.LoadUint64(&e.ctl[ctlReady]))
	} else {
		holder.Process.Kill()
		holder.Wait()
	}
	deadline = time.Now().Add(10 * time.Second)
	for atomic.LoadUint64(&e.ctl[ctlDone]) < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("%s: %d of %d waiters got the lock in 10 s after the holder's death",
				name, atomic.LoadUint64(&e.ctl[ctlDone]), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return time.Duration(int64(atomic.LoadUint64(&e.ctl[ctlAcquired])) - killed)
}

func waitFor(b *testing.B, w *uint64) {
	deadline := time.Now().Add(10 * time.Second)
	for atomic.LoadUint64(w) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("a child never got ready")
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// recoverChild is the roles of the recovery benchmarks: path, peer.
//
//	recover-hold        lock, wait to be killed
//	recover-hold-unmap  lock; when told, unmap the lock's page (no Close),
//	                    note when, and SIGKILL itself (its own library would
//	                    fault on the page if it lived on)
//	recover-wait        lock, note when, unlock
//	recover-waitn       one of many: the first to lock notes when; count it
func recoverChild(role string, args []string) int {
	e, p, err := openChildPeer(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch role {
	case "recover-hold":
		p.Lock()
		atomic.StoreUint64(&e.ctl[ctlHeld], 1)
		select {}
	case "recover-hold-unmap":
		p.Lock()
		atomic.StoreUint64(&e.ctl[ctlHeld], 1)
		for atomic.LoadUint64(&e.ctl[ctlUnmap]) == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		b, _ := e.region(args[1]).Bytes(peerMutexOff, 8)
		page := uintptr(unsafe.Pointer(&b[0])) &^ uintptr(os.Getpagesize()-1)
		if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, page, uintptr(os.Getpagesize()), 0); errno != 0 {
			fmt.Fprintln(os.Stderr, "munmap:", errno)
			return 1
		}
		atomic.StoreUint64(&e.ctl[ctlReady], uint64(monotonic()))
		unix.Kill(os.Getpid(), unix.SIGKILL)
		select {}
	case "recover-waitn":
		atomic.AddUint64(&e.ctl[ctlReadyN], 1)
		p.Lock()
		atomic.CompareAndSwapUint64(&e.ctl[ctlAcquired], 0, uint64(monotonic()))
		p.Unlock()
		atomic.AddUint64(&e.ctl[ctlDone], 1)
		return 0
	}
	atomic.StoreUint64(&e.ctl[ctlReady], 1)
	p.Lock()
	atomic.StoreUint64(&e.ctl[ctlAcquired], uint64(monotonic()))
	p.Unlock()
	return 0
}
