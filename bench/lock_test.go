//go:build linux

package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newPeerEnv(b *testing.B) *peerEnv {
	path := fmt.Sprintf("%s/shmlock-bench-peers-%d", "/dev/shm", os.Getpid())
	os.Remove(path)
	e, err := openPeerEnv(path)
	if err != nil {
		b.Fatal(err)
	}
	if pthreadPeer != nil {
		// Initialised here, in the benchmark process, before any child
		// that uses it exists.
		if _, err := pthreadPeer(e, true); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		e.r.Close()
		removeSem(path)
		os.Remove(path)
		os.Remove(path + ".lock")
	})
	return e
}

// BenchmarkUncontended: one goroutine, Lock+Unlock pairs.
func BenchmarkUncontended(b *testing.B) {
	e := newPeerEnv(b)
	for _, name := range peerNames {
		b.Run(name, func(b *testing.B) {
			p, err := e.open(name)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			for b.Loop() {
				p.Lock()
				p.Unlock()
			}
		})
	}
}

// BenchmarkContended: N processes (goroutines for syncmutex) each lock,
// increment the shared counter (a plain load and store: two holders at once
// would lose updates), unlock. Reports operations per second and the CPU
// seconds the workers spent per million operations, and fails if the count
// is wrong.
func BenchmarkContended(b *testing.B) {
	for _, name := range peerNames {
		for _, n := range []int{2, 8} {
			b.Run(fmt.Sprintf("%s/procs=%d", name, n), func(b *testing.B) {
				e := newPeerEnv(b)
				per := max(b.N/n, 1)
				atomic.StoreUint64(e.counter, 0)
				var cpu time.Duration
				start := time.Now()
				if name == "syncmutex" {
					var before, after unix.Rusage
					unix.Getrusage(unix.RUSAGE_SELF, &before)
					p, _ := e.open(name)
					var wg sync.WaitGroup
					for range n {
						wg.Go(func() { contend(p, e.counter, per) })
					}
					wg.Wait()
					unix.Getrusage(unix.RUSAGE_SELF, &after)
					cpu = rusageCPU(&after) - rusageCPU(&before)
				} else {
					// Workers start together, once all have started up,
					// and report the CPU their loops used: start-up is in
					// neither figure.
					var cmds []*exec.Cmd
					for range n {
						cmds = append(cmds, child(b, "contend", e.path, name, strconv.Itoa(per)))
					}
					for atomic.LoadUint64(&e.ctl[ctlReadyN]) < uint64(n) {
						time.Sleep(50 * time.Microsecond)
					}
					start = time.Now()
					atomic.StoreUint64(&e.ctl[ctlGo], 1)
					for _, c := range cmds {
						if err := c.Wait(); err != nil {
							b.Fatal(err)
						}
					}
					cpu = time.Duration(atomic.LoadUint64(&e.ctl[ctlCPU]))
				}
				elapsed := time.Since(start)
				total := uint64(n * per)
				if got := atomic.LoadUint64(e.counter); got != total {
					b.Fatalf("counter %d, want %d: two holders at once", got, total)
				}
				b.ReportMetric(float64(total)/elapsed.Seconds(), "ops/s")
				b.ReportMetric(cpu.Seconds()/float64(total)*1e6, "cpu-s/Mop")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

func contend(p peer, counter *uint64, n int) {
	for range n {
		p.Lock()
		atomic.StoreUint64(counter, atomic.LoadUint64(counter)+1)
		p.Unlock()
	}
}

func rusageCPU(ru *unix.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// contendChild is the "contend" role: path, peer, count.
func contendChild(args []string) int {
	e, p, err := openChildPeer(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	n, _ := strconv.Atoi(args[2])
	atomic.AddUint64(&e.ctl[ctlReadyN], 1)
	for atomic.LoadUint64(&e.ctl[ctlGo]) == 0 {
		runtime.Gosched()
	}
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	contend(p, e.counter, n)
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	atomic.AddUint64(&e.ctl[ctlCPU], uint64(rusageCPU(&after)-rusageCPU(&before)))
	return 0
}
