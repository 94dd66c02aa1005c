//go:build linux

package bench

import (
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

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

// recoverChild is the "recover-hold" and "recover-wait" roles: path, peer.
func recoverChild(role string, args []string) int {
	e, p, err := openChildPeer(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if role == "recover-hold" {
		p.Lock()
		atomic.StoreUint64(&e.ctl[ctlHeld], 1)
		select {}
	}
	atomic.StoreUint64(&e.ctl[ctlReady], 1)
	p.Lock()
	atomic.StoreUint64(&e.ctl[ctlAcquired], uint64(monotonic()))
	p.Unlock()
	return 0
}
