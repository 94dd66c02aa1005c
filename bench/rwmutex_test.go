//go:build linux

package bench

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
)

// The reader/writer benchmarks: shmlock.RWMutex in each mode beside flock
// (LOCK_SH readers, LOCK_EX writers), a process-shared pthread_rwlock_t
// (-tags shmlock_pthread; not robust) and shmlock.Mutex (every operation
// exclusive).
var (
	rwProcs = flag.String("rw.procs", "1,2,8,32,64,128", "BenchmarkRWReadMostly: process counts")
	rwDur   = flag.Duration("rw.duration", time.Second, "BenchmarkRWReadMostly: how long each point runs")
	rwEvery = flag.Int("rw.every", 100, "BenchmarkRWReadMostly: one write in this many operations")
	rwCS    = flag.String("rw.cs", "empty,1us", "BenchmarkRWReadMostly: critical sections (as wait.cs)")
)

// rwPeers are the reader/writer locks compared; pthreadRW adds
// "pthreadrwlock" in cgo builds with -tags shmlock_pthread.
var rwPeers = []string{"rwmutex-probe", "rwmutex-robust", "mutex-robust", "flock"}

// A rwPeer locks for reading (RLock) or writing (Lock).
type rwPeer interface {
	sync.Locker
	RLock()
	RUnlock()
}

// The RW benchmark region's layout: a Mutex, an RWMutex, a line for the
// pthread rwlock, the control words.
const (
	rwSlots    = 256
	rwCtlWords = 8
	rwReadyW   = 0 // processes at the start line
	rwGoW      = 1 // nonzero: go
	rwStopW    = 2 // nonzero: stop
	rwCountW   = 3 // incremented by writers under the lock
	rwHeldW    = 4 // a holder holds
)

type rwEnv struct {
	r, rr   *shm.Region // probe mode, robust mode
	mu      int
	rw      int
	pthread int
	ctl     []uint64
	path    string
}

func rwLayout() (*shm.Layout, int, int, int, int) {
	var l shm.Layout
	mu := l.Lock("mutex", shmlock.Size)
	rw := l.Lock("rwmutex", shmlock.RWMutexSize(rwSlots))
	pt := l.Data("pthread rwlock", shm.LineSize)
	ctl := l.Data("control", 8*rwCtlWords)
	return &l, mu, rw, pt, ctl
}

func openRWEnv(path string) (*rwEnv, error) {
	l, mu, rw, pt, ctlOff := rwLayout()
	r, err := shm.Open(path, shm.Options{Layout: l, Slots: rwSlots, Mode: shm.ModeProbe})
	if err != nil {
		return nil, err
	}
	rr, err := shm.Open(path+".robust", shm.Options{Layout: l, Slots: rwSlots, Mode: shm.ModeRobust})
	if err != nil {
		r.Close()
		return nil, err
	}
	b, err := r.Bytes(ctlOff, 8*rwCtlWords)
	if err != nil {
		return nil, err
	}
	return &rwEnv{r: r, rr: rr, mu: mu, rw: rw, pthread: pt, path: path,
		ctl: unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), rwCtlWords)}, nil
}

func newRWEnv(b *testing.B) *rwEnv {
	path := fmt.Sprintf("/dev/shm/shmlock-bench-rw-%d", os.Getpid())
	os.Remove(path)
	e, err := openRWEnv(path)
	if err != nil {
		b.Fatal(err)
	}
	if pthreadRW != nil {
		if _, err := pthreadRW(e, true); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		e.r.Close()
		e.rr.Close()
		os.Remove(path)
		os.Remove(path + ".robust")
		os.Remove(path + ".lock")
	})
	return e
}

// pthreadRW opens the pthread rwlock, in builds with -tags shmlock_pthread.
var pthreadRW func(e *rwEnv, create bool) (rwPeer, error)

// mutexRW is a Mutex as a reader/writer lock whose readers are writers.
type mutexRW struct{ *shmlock.Mutex }

func (m mutexRW) RLock()   { m.Lock() }
func (m mutexRW) RUnlock() { m.Unlock() }

type flockRW struct{ f *os.File }

func (l flockRW) Lock()    { unix.Flock(int(l.f.Fd()), unix.LOCK_EX) }
func (l flockRW) Unlock()  { unix.Flock(int(l.f.Fd()), unix.LOCK_UN) }
func (l flockRW) RLock()   { unix.Flock(int(l.f.Fd()), unix.LOCK_SH) }
func (l flockRW) RUnlock() { unix.Flock(int(l.f.Fd()), unix.LOCK_UN) }

func (e *rwEnv) open(name string) (rwPeer, error) {
	switch name {
	case "rwmutex-probe":
		return shmlock.NewRWMutex(e.r, e.rw)
	case "rwmutex-robust":
		return shmlock.NewRWMutex(e.rr, e.rw)
	case "mutex-robust":
		m, err := shmlock.New(e.rr, e.mu)
		return mutexRW{m}, err
	case "flock":
		f, err := os.OpenFile(e.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
		return flockRW{f}, err
	case "pthreadrwlock":
		if pthreadRW != nil {
			return pthreadRW(e, false)
		}
	}
	return nil, fmt.Errorf("no peer %s", name)
}

// BenchmarkRWUncontended: one goroutine, RLock+RUnlock (read) and
// Lock+Unlock (write) pairs, beside a Mutex's Lock+Unlock.
func BenchmarkRWUncontended(b *testing.B) {
	e := newRWEnv(b)
	for _, name := range append(slices.Clone(rwPeers), pthreadName()...) {
		p, err := e.open(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/read", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.RLock()
				p.RUnlock()
			}
		})
		b.Run(name+"/write", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Lock()
				p.Unlock()
			}
		})
	}
}

// BenchmarkRWParallel: goroutines of one process (one per core) read-lock
// one lock at once: shmlock's RWMutex (one line per process, which they
// share) beside sync.RWMutex (one reader count).
func BenchmarkRWParallel(b *testing.B) {
	e := newRWEnv(b)
	for _, name := range []string{"rwmutex-robust", "syncrwmutex"} {
		var p rwPeer = new(sync.RWMutex)
		if name != "syncrwmutex" {
			var err error
			if p, err = e.open(name); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p.RLock()
					p.RUnlock()
				}
			})
		})
	}
}

func pthreadName() []string {
	if pthreadRW != nil {
		return []string{"pthreadrwlock"}
	}
	return nil
}

// BenchmarkRWReadMostly: N processes each run for rw.duration, one write in
// rw.every operations (an increment of a shared counter, a plain load and
// store), the others reads; it reports their total operations per second,
// and fails if the counter is wrong. On 2 cores, more than 2 processes share
// them.
func BenchmarkRWReadMostly(b *testing.B) {
	for _, ns := range strings.Split(*rwProcs, ",") {
		n, err := strconv.Atoi(ns)
		if err != nil {
			b.Fatal(err)
		}
		for _, cs := range strings.Split(*rwCS, ",") {
			for _, name := range append(slices.Clone(rwPeers), pthreadName()...) {
				b.Run(fmt.Sprintf("cs=%s/procs=%d/%s", cs, n, name), func(b *testing.B) { rwReadMostly(b, name, n, cs) })
			}
		}
	}
}

func rwReadMostly(b *testing.B, name string, n int, cs string) {
	e := newRWEnv(b)
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
		cmd.Env = append(os.Environ(), "BENCH_CHILD="+strings.Join([]string{"rw", e.path, name, strconv.Itoa(*rwEvery), cs}, " "))
		outs[i] = new(strings.Builder)
		cmd.Stdout, cmd.Stderr = outs[i], os.Stderr
		cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cmds[i] = cmd
	}
	deadline := time.Now().Add(time.Minute)
	for atomic.LoadUint64(&e.ctl[rwReadyW]) < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatal("the processes did not start")
		}
		time.Sleep(time.Millisecond)
	}
	b.ResetTimer()
	start := time.Now()
	atomic.StoreUint64(&e.ctl[rwGoW], 1)
	time.Sleep(*rwDur)
	atomic.StoreUint64(&e.ctl[rwStopW], 1)
	elapsed := time.Since(start)
	var ops, writes uint64
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			b.Fatalf("process %d: %v", i, err)
		}
		var o, w uint64
		if _, err := fmt.Sscanf(outs[i].String(), "ops=%d writes=%d", &o, &w); err != nil {
			b.Fatalf("process %d: %q", i, outs[i].String())
		}
		ops, writes = ops+o, writes+w
	}
	if got := atomic.LoadUint64(&e.ctl[rwCountW]); got != writes {
		b.Fatalf("counter %d, writes %d: a writer beside another", got, writes)
	}
	b.ReportMetric(float64(ops)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(ops), "ns/op")
}

// openRWPeer opens, in a child, the RW region at path and its peer name.
func openRWPeer(path, name string) (*rwEnv, rwPeer, error) {
	e, err := openRWEnv(path)
	if err != nil {
		return nil, nil, err
	}
	p, err := e.open(name)
	return e, p, err
}

// rwChild is one process of BenchmarkRWReadMostly: path, peer, every,
// critical section.
func rwChild(args []string) int {
	e, p, err := openRWPeer(args[0], args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	every, _ := strconv.Atoi(args[2])
	section, err := criticalSection(args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	atomic.AddUint64(&e.ctl[rwReadyW], 1)
	for atomic.LoadUint64(&e.ctl[rwGoW]) == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	var ops, writes uint64
	counter := &e.ctl[rwCountW]
	for ; ops&63 != 0 || atomic.LoadUint64(&e.ctl[rwStopW]) == 0; ops++ {
		if ops%uint64(every) == 0 {
			p.Lock()
			atomic.StoreUint64(counter, atomic.LoadUint64(counter)+1)
			section(nanotime())
			p.Unlock()
			writes++
		} else {
			p.RLock()
			_ = atomic.LoadUint64(counter)
			section(nanotime())
			p.RUnlock()
		}
	}
	fmt.Printf("ops=%d writes=%d\n", ops, writes)
	return 0
}

// BenchmarkRWReaderDeath: a writer waits in Lock for a reader process that
// holds a share; the reader is SIGKILLed. Reports the time from the kill to
// the writer's acquisition, median and max over b.N kills (run it with
// -benchtime=50x or more).
func BenchmarkRWReaderDeath(b *testing.B) {
	for _, name := range []string{"rwmutex-probe", "rwmutex-robust"} {
		b.Run(name, func(b *testing.B) {
			e := newRWEnv(b)
			p, err := e.open(name)
			if err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			for range b.N {
				atomic.StoreUint64(&e.ctl[rwHeldW], 0)
				reader := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
				reader.Env = append(os.Environ(), "BENCH_CHILD="+strings.Join([]string{"rw-hold", e.path, name}, " "))
				reader.Stderr = os.Stderr
				reader.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
				if err := reader.Start(); err != nil {
					b.Fatal(err)
				}
				waitFor(b, &e.ctl[rwHeldW])
				acquired := make(chan int64)
				go func() { p.Lock(); acquired <- monotonic() }()
				time.Sleep(10 * time.Millisecond) // the writer waits on the reader's line
				killed := monotonic()
				reader.Process.Kill()
				select {
				case at := <-acquired:
					lat = append(lat, time.Duration(at-killed))
				case <-time.After(10 * time.Second):
					b.Fatal("the writer never acquired: the dead reader wedged it")
				}
				p.Unlock()
				reader.Wait()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-us")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-us")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// rwHold takes a share and holds it until killed: path, peer.
func rwHold(args []string) int {
	e, p, err := openRWPeer(args[0], args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p.RLock()
	atomic.StoreUint64(&e.ctl[rwHeldW], 1)
	select {}
}
