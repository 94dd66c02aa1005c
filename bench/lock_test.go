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

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
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
		e.close()
		removeSem(path)
		os.Remove(path)
		os.Remove(path + ".robust")
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
			defer closePeer(p)
			for b.Loop() {
				p.Lock()
				p.Unlock()
			}
		})
	}
}

// BenchmarkParallel: goroutines of one process (as many as GOMAXPROCS, one
// per core) each lock and unlock a lock of their own. Locks that share nothing
// scale with the cores; a lock implementation with a process-wide step (a
// list guarded by one mutex, say) would serialise them.
func BenchmarkParallel(b *testing.B) {
	e := newPeerEnv(b)
	for _, name := range []string{"shmlock-probe", "shmlock-robust", "syncmutex"} {
		b.Run(name, func(b *testing.B) {
			var next atomic.Int32
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1)) - 1
				if i >= parallelLocks {
					b.Error("more goroutines than locks")
					return
				}
				var p peer = new(sync.Mutex)
				if name != "syncmutex" {
					m, err := shmlock.New(e.region(name), parallelOff+i*shm.LineSize)
					if err != nil {
						b.Error(err)
						return
					}
					p = m
				}
				for pb.Next() {
					p.Lock()
					p.Unlock()
				}
			})
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
				if name == "syncmutex" {
					e := newPeerEnv(b)
					per := max(b.N/n, 1)
					var before, after unix.Rusage
					unix.Getrusage(unix.RUSAGE_SELF, &before)
					start := time.Now()
					p, _ := e.open(name)
					var wg sync.WaitGroup
					wg.Add(n)
					for range n {
						go func() { defer wg.Done(); contend(p, e.counter, per) }()
					}
					wg.Wait()
					elapsed := time.Since(start)
					unix.Getrusage(unix.RUSAGE_SELF, &after)
					report(b, e, uint64(n*per), elapsed, rusageCPU(&after)-rusageCPU(&before))
					return
				}
				workers(b, n, "contend", name)
			})
		}
	}
}

// workers runs n child processes in role ("contend" or "xadd") for peer name,
// each doing its share of b.N operations on the shared counter. They start
// together, once all have started up, and report the CPU their loops used:
// start-up is in neither figure.
func workers(b *testing.B, n int, role, name string) {
	e := newPeerEnv(b)
	per := max(b.N/n, 1)
	var cmds []*exec.Cmd
	for range n {
		cmds = append(cmds, child(b, role, e.path, name, strconv.Itoa(per)))
	}
	for atomic.LoadUint64(&e.ctl[ctlReadyN]) < uint64(n) {
		time.Sleep(50 * time.Microsecond)
	}
	start := time.Now()
	atomic.StoreUint64(&e.ctl[ctlGo], 1)
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	report(b, e, uint64(n*per), time.Since(start), time.Duration(atomic.LoadUint64(&e.ctl[ctlCPU])))
}

// report checks the count and reports throughput and CPU per operation.
func report(b *testing.B, e *peerEnv, total uint64, elapsed, cpu time.Duration) {
	if got := atomic.LoadUint64(e.counter); got != total {
		b.Fatalf("counter %d, want %d: two holders at once", got, total)
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(cpu.Seconds()/float64(total)*1e6, "cpu-s/Mop")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkFloor: what this machine charges for the steps every lock here
// takes, to read the other results against. lockedop is one uncontended CAS
// on a word of the shared mapping: a Lock+Unlock pair of any futex-style lock
// costs two such locked instructions (the unlock must learn atomically
// whether anyone sleeps). xadd/procs=N is N processes adding atomically to one
// shared word: each operation moves the cache line between cores, the floor
// of any lock handed between processes.
func BenchmarkFloor(b *testing.B) {
	b.Run("lockedop", func(b *testing.B) {
		e := newPeerEnv(b)
		var v uint64
		for b.Loop() {
			atomic.CompareAndSwapUint64(e.counter, v, v+1)
			v++
		}
	})
	for _, n := range []int{2, 8} {
		b.Run(fmt.Sprintf("xadd/procs=%d", n), func(b *testing.B) { workers(b, n, "xadd", "none") })
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

// contendChild is the "contend" and "xadd" roles: path, peer, count.
func contendChild(role string, args []string) int {
	e, err := openPeerEnv(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var p peer
	if role == "contend" {
		if p, err = e.open(args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	n, _ := strconv.Atoi(args[2])
	atomic.AddUint64(&e.ctl[ctlReadyN], 1)
	for atomic.LoadUint64(&e.ctl[ctlGo]) == 0 {
		runtime.Gosched()
	}
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	if p != nil {
		contend(p, e.counter, n)
	} else {
		for range n {
			atomic.AddUint64(e.counter, 1)
		}
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	atomic.AddUint64(&e.ctl[ctlCPU], uint64(rusageCPU(&after)-rusageCPU(&before)))
	return 0
}
